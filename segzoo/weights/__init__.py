"""Getting weights: sources, download and cache, verification, safe reading, strict loading (of the
segmentation weights and of the ImageNet backbone files training starts from)."""

from segzoo.weights.cache import cache_dir
from segzoo.weights.checkpoint import load_state_dict_strict, read_state_dict
from segzoo.weights.errors import (
    CheckpointError,
    CheckpointMismatchError,
    ChecksumMismatchError,
    UnsafeCheckpointError,
    WeightsError,
    WeightsUnavailableError,
)
from segzoo.weights.fetch import FetchedFile, fetch_weights, offline
from segzoo.weights.imagenet import load_imagenet_weights
from segzoo.weights.pretrained import load_pretrained

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "ChecksumMismatchError",
    "UnsafeCheckpointError",
    "FetchedFile",
    "WeightsError",
    "WeightsUnavailableError",
    "cache_dir",
    "fetch_weights",
    "load_imagenet_weights",
    "load_pretrained",
    "load_state_dict_strict",
    "offline",
    "read_state_dict",
]
