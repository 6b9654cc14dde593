"""The ImageNet classification files the papers start their segmentation training from, as backbone weights.

Each entry's ``pretrained_backbone`` source goes through the same fetch as the
segmentation weights (cache, ``SEGZOO_MIRROR``, pins, the lock file's trust on
first use, offline mode, manual sources); in a zip or tar archive every member
is checked and only the checkpoint is extracted (:mod:`segzoo.weights.archive`).
The family's ImageNet converter, handed in by the caller, drops the classifier
and adapts names and shapes, and the result loads strictly into ``model.backbone``.
"""

from __future__ import annotations

import logging

from torch import nn

from segzoo.weights.cache import ChecksumLock, cache_dir, file_sha256
from segzoo.weights.checkpoint import load_state_dict_strict, read_state_dict
from segzoo.weights.converters import ImageNetConverter
from segzoo.weights.errors import CheckpointError, WeightsError
from segzoo.weights.fetch import FetchedFile, fetch_weights
from segzoo.zoo.records import ModelInfo, WeightSource

log = logging.getLogger(__name__)


def imagenet_source(info: ModelInfo) -> WeightSource:
    """The entry's ImageNet backbone source; a clear error where the paper names none."""
    if info.pretrained_backbone is None:
        raise WeightsError(
            f"{info.name} has no ImageNet backbone file in the registry: the paper names none (see the entry's "
            f"notes, segzoo info {info.name}); build it with pretrained=False or start from its segmentation weights"
        )
    return info.pretrained_backbone


def load_imagenet_weights(
    model: nn.Module,
    info: ModelInfo,
    convert: ImageNetConverter,
    progress: bool | None = None,
    verify: bool | None = None,
) -> FetchedFile:
    """Load entry ``info``'s ImageNet classification weights into ``model.backbone``, strictly; returns the file.

    The file is fetched and verified like the segmentation weights, converted
    by ``convert`` (the family's ImageNet converter: classifier dropped, names
    and shapes adapted; ``NotImplementedError`` where it cannot) and must then
    fit every backbone tensor; the rest of ``model`` is left as is. A file with
    no known checksum that does not load is removed from the cache; one that
    loads has its sha256 recorded, and the returned file carries it.
    """
    source = imagenet_source(info)  # an entry without one fails here, before anything is fetched
    fetched = fetch_weights(source, progress, verify)
    lock = ChecksumLock(cache_dir())
    try:
        state_dict = read_state_dict(fetched.path, member=source.member)  # an archive's checkpoint, for a zip or tar
        try:
            state_dict = convert(state_dict, model.backbone)
        except NotImplementedError as err:
            raise WeightsError(
                f"{info.name}: loading its ImageNet backbone {source.filename} is not supported: {err}"
            ) from err
        load_state_dict_strict(model.backbone, state_dict, f"{fetched.path} (ImageNet backbone of {info.name})")
    except CheckpointError:
        if lock.expected_sha256(source) is None:
            fetched.path.unlink(missing_ok=True)
            log.warning("removed %s from the cache: it does not load into %s's backbone", fetched.path, info.name)
        raise
    sha256 = lock.expected_sha256(source) or fetched.sha256 or file_sha256(fetched.path)
    lock.record(source, fetched.path, sha256)
    log.info("%s: loaded the ImageNet backbone from %s (%s)", info.name, source.url, fetched.path)
    return FetchedFile(fetched.path, sha256)
