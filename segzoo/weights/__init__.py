"""Getting weights: download and cache, read checkpoint files safely, load them strictly."""
from segzoo.weights.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    load_state_dict_strict,
    read_state_dict,
)
from segzoo.weights.download import ChecksumMismatchError, WeightsDownloadError, cache_dir, fetch_weights

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "ChecksumMismatchError",
    "WeightsDownloadError",
    "cache_dir",
    "fetch_weights",
    "load_state_dict_strict",
    "read_state_dict",
]
