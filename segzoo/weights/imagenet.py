"""The ImageNet classification files the papers start their segmentation training from, as backbone weights.

Each entry's ``pretrained_backbone`` source goes through the same fetch as the
segmentation weights (cache, ``SEGZOO_MIRROR``, pins, the lock file's trust on
first use, offline mode, manual sources); in a zip or tar archive every member
is checked and only the checkpoint is extracted (:mod:`segzoo.weights.archive`).
The family's ImageNet converter drops the classifier and adapts names and
shapes, and the result loads strictly into ``model.backbone``.
"""
from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from segzoo.families import convert_imagenet_state_dict
from segzoo.weights.cache import ChecksumLock, cache_dir, file_sha256
from segzoo.weights.checkpoint import load_state_dict_strict, read_state_dict
from segzoo.weights.errors import CheckpointError, WeightsError
from segzoo.weights.fetch import MANIFEST_NAME, FetchedFile, ManualDownloadRequired, fetch_weights
from segzoo.zoo.pins import PINS_FILE, write_pin
from segzoo.zoo.records import ModelInfo, WeightSource

log = logging.getLogger(__name__)


def _info(name: str) -> ModelInfo:
    from segzoo.registry import model_info  # the registry imports this package

    return model_info(name)


def imagenet_source(name: str) -> WeightSource:
    """The ImageNet backbone source of the entry ``name``; a clear error where the paper names none."""
    info = _info(name)
    if info.pretrained_backbone is None:
        raise WeightsError(
            f"{info.name} has no ImageNet backbone file in the registry: the paper names none (see the entry's "
            f"notes, segzoo info {info.name}); build it with pretrained=False or start from its segmentation weights"
        )
    return info.pretrained_backbone


def load_imagenet_backbone(
    model: nn.Module, name: str, *, progress: bool | None = None, verify: bool | None = None
) -> None:
    """Load entry ``name``'s ImageNet classification weights into ``model.backbone``, strictly.

    ``model`` is ``segzoo.create_model(name, pretrained=False)`` (or any model
    with the entry's backbone as ``.backbone``); the rest of it is left as is.
    The file is fetched and verified like the segmentation weights, converted
    by the family's ImageNet converter (classifier dropped, names and shapes
    adapted, e.g. a ViT's position grid resized to the training crop) and must
    then fit every backbone tensor. A file with no known checksum that does
    not load is removed from the cache; one that loads has its sha256 recorded.
    """
    imagenet_source(name)  # an entry without one fails here, before anything is fetched
    _fetch_and_load(model.backbone, name, progress, verify)


def _fetch_and_load(
    backbone: nn.Module, name: str, progress: bool | None, verify: bool | None = None
) -> tuple[WeightSource, FetchedFile]:
    info = _info(name)
    source = imagenet_source(name)
    fetched = fetch_weights(source, progress, verify)
    lock = ChecksumLock(cache_dir())
    try:
        _load_into_backbone(backbone, info, source, fetched)
    except CheckpointError:
        if lock.expected_sha256(source) is None:
            fetched.path.unlink(missing_ok=True)
            log.warning("removed %s from the cache: it does not load into %s's backbone", fetched.path, info.name)
        raise
    sha256 = lock.expected_sha256(source) or fetched.sha256 or file_sha256(fetched.path)
    lock.record(source, fetched.path, sha256)
    log.info("%s: loaded the ImageNet backbone from %s (%s)", info.name, source.url, fetched.path)
    return source, FetchedFile(fetched.path, sha256)


def _load_into_backbone(backbone: nn.Module, info: ModelInfo, source: WeightSource, fetched: FetchedFile) -> None:
    state_dict = read_state_dict(fetched.path)  # an archive's checkpoint member, for a zip or tar
    try:
        state_dict = convert_imagenet_state_dict(info.architecture, state_dict, backbone)
    except NotImplementedError as err:
        raise WeightsError(f"{info.name}: loading its ImageNet backbone {source.filename} is not supported: {err}") from err
    load_state_dict_strict(backbone, state_dict, f"{fetched.path} (ImageNet backbone of {info.name})")


def _verified_backbone_file(name: str, progress: bool | None) -> tuple[WeightSource, FetchedFile]:
    """Fetch the entry's ImageNet file and prove it loads strictly into the entry's backbone."""
    from segzoo.registry import create_model

    return _fetch_and_load(create_model(name, pretrained=False).backbone, name, progress)


def _distinct_entries(names: list[str]) -> dict[str, str]:
    """One entry name per distinct ImageNet file among ``names`` (entries without one are left out)."""
    chosen: dict[str, str] = {}
    for name in names:
        source = _info(name).pretrained_backbone
        if source is not None:
            chosen.setdefault(source.url, _info(name).name)
    return chosen


def _verified_files(
    names: list[str], progress: bool | None, failed: dict[str, str]
) -> Iterator[tuple[WeightSource, FetchedFile]]:
    """Each distinct ImageNet file of ``names``, fetched and proven to load; why not, by URL, into ``failed``."""
    for url, name in _distinct_entries(names).items():
        try:
            yield _verified_backbone_file(name, progress)
        except (ManualDownloadRequired, WeightsError) as err:
            failed[url] = str(err)


def download_imagenet_to_folder(
    names: list[str], folder: Path, progress: bool | None = None
) -> tuple[Path, dict[str, str]]:
    """Copy the ImageNet backbone files of ``names`` (each once) into ``folder`` and its ``manifest.json``.

    Returns the manifest's path and, by file, why a file could not be fetched or loaded.
    """
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    failed: dict[str, str] = {}
    for source, fetched in _verified_files(names, progress, failed):
        shutil.copyfile(fetched.path, folder / source.filename)
        manifest[f"imagenet:{source.filename}"] = {
            "file": source.filename, "url": source.url,
            "sha256": file_sha256(folder / source.filename), "size": (folder / source.filename).stat().st_size,
        }
    manifest_path.write_text(json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")
    return manifest_path, failed


def pin_imagenet(
    names: list[str], pins_file: Path = PINS_FILE, progress: bool | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """Fetch, strictly load and pin (sha256, size) each distinct ImageNet file of ``names``.

    Returns the pinned hashes by URL and, by URL, why a file was not pinned.
    """
    pinned: dict[str, str] = {}
    failed: dict[str, str] = {}
    for source, fetched in _verified_files(names, progress, failed):
        sha256 = fetched.sha256 or file_sha256(fetched.path)
        write_pin(source.url, sha256, fetched.path.stat().st_size, pins_file)
        pinned[source.url] = sha256
    return pinned, failed
