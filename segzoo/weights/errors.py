"""What can go wrong getting weights; every message names the file and says what to do."""


class WeightsError(RuntimeError):
    """Base class of segzoo's weight errors."""


class WeightsUnavailableError(WeightsError):
    """The weights could not be fetched (network, offline mode, missing mirror file)."""


class ChecksumMismatchError(WeightsError):
    """A file does not have the sha256 the registry pins or the cache recorded on first use."""


class CheckpointError(WeightsError):
    """A checkpoint file cannot be read, or holds no state dict."""


class CheckpointMismatchError(CheckpointError):
    """A state dict does not match the model key for key and shape for shape."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that needs more than tensors and plain data; segzoo does not run the code it would take."""
