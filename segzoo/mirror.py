"""Maintainer and air-gap tools: fill a mirror folder with weights, pin checksums into the registry.

Both handle one file per entry, either its segmentation weights or the ImageNet
file its training starts from (:data:`SEGMENTATION_WEIGHTS`, :data:`IMAGENET_BACKBONES`):
each is fetched and proven to load strictly before it is copied or pinned.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from segzoo.families import convert_imagenet_state_dict
from segzoo.registry import create_model, model_info
from segzoo.weights import FetchedFile, WeightsError, fetch_weights, load_imagenet_weights
from segzoo.weights.cache import file_sha256
from segzoo.weights.fetch import MANIFEST_NAME, ManualDownloadRequired
from segzoo.zoo.pins import PINS_FILE, write_pin
from segzoo.zoo.records import ModelInfo, WeightSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MirroredFile:
    """One file to copy or pin: ``key`` names it in reports, ``manifest_key`` in a mirror's manifest."""

    key: str
    manifest_key: str
    source: WeightSource
    verified: Callable[[], FetchedFile]  # fetches the file and proves it loads strictly, or raises


@dataclass(frozen=True)
class FileKind:
    """Which file of each entry the tools handle; a ``skipped`` error sets a file aside (reported) and goes on."""

    files: Callable[[list[str], bool | None], Iterator[MirroredFile]]
    skipped: type[WeightsError]


def _verified_segmentation_weights(info: ModelInfo, source: WeightSource, progress: bool | None) -> FetchedFile:
    fetched = fetch_weights(source, progress)
    create_model(info.name, checkpoint_path=fetched.path)  # raises unless every tensor fits
    return fetched


def _segmentation_files(names: list[str], progress: bool | None) -> Iterator[MirroredFile]:
    """Each entry's original (http) weight source: the file a mirror serves and a pin is about."""
    for name in names:
        info = model_info(name)
        source = next(w for w in info.weights if not w.is_hf_hub)
        yield MirroredFile(
            info.name, info.name, source, functools.partial(_verified_segmentation_weights, info, source, progress)
        )


def _verified_imagenet_file(info: ModelInfo, progress: bool | None) -> FetchedFile:
    convert = functools.partial(convert_imagenet_state_dict, info.architecture)
    return load_imagenet_weights(create_model(info.name), info, convert, progress)


def _imagenet_files(names: list[str], progress: bool | None) -> Iterator[MirroredFile]:
    """Each distinct ImageNet file among the entries (those without one are left out), proven on its first entry."""
    first_entry: dict[str, ModelInfo] = {}
    for name in names:
        info = model_info(name)
        if info.pretrained_backbone is not None:
            first_entry.setdefault(info.pretrained_backbone.url, info)
    for url, info in first_entry.items():
        source = info.pretrained_backbone
        yield MirroredFile(
            url, f"imagenet:{source.filename}", source, functools.partial(_verified_imagenet_file, info, progress)
        )


SEGMENTATION_WEIGHTS = FileKind(_segmentation_files, skipped=ManualDownloadRequired)
IMAGENET_BACKBONES = FileKind(_imagenet_files, skipped=WeightsError)


def _verified_files(
    names: list[str], kind: FileKind, progress: bool | None, skipped: dict[str, str]
) -> Iterator[tuple[MirroredFile, FetchedFile]]:
    """Each file of ``kind`` for ``names``, fetched and proven to load; why not, by key, into ``skipped``."""
    for file in kind.files(names, progress):
        try:
            yield file, file.verified()
        except kind.skipped as err:
            skipped[file.key] = str(err)


def download_to_folder(
    names: list[str], folder: Path, progress: bool | None = None, kind: FileKind = SEGMENTATION_WEIGHTS
) -> tuple[Path, dict[str, str]]:
    """Copy the files of ``names`` into ``folder`` with a ``manifest.json``; usable as ``SEGZOO_MIRROR``.

    Returns the manifest's path and, by key, why a file was set aside: for the
    segmentation weights, entries published on share pages that need a person
    (``manual`` sources) whose file is not in the cache yet, with what to do
    (those already in the cache are copied like the others); for the ImageNet
    files, any that could not be fetched or loaded.
    """
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    skipped: dict[str, str] = {}
    for file, fetched in _verified_files(names, kind, progress, skipped):
        copy = folder / file.source.filename
        shutil.copyfile(fetched.path, copy)
        manifest[file.manifest_key] = {
            "file": file.source.filename,
            "url": file.source.url,
            "sha256": file_sha256(copy),
            "size": copy.stat().st_size,
        }
        log.info("%s -> %s", file.key, copy)
    manifest_path.write_text(json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")
    return manifest_path, skipped


def pin(
    names: list[str], pins_file: Path = PINS_FILE, progress: bool | None = None, kind: FileKind = SEGMENTATION_WEIGHTS
) -> tuple[dict[str, str], dict[str, str]]:
    """Download, strictly load and record sha256 and size of each file of ``names`` in the registry's pins.

    Returns the pinned hashes by key (entry name, or URL for the ImageNet
    files) and, by key, why a file was set aside (see :func:`download_to_folder`).
    """
    pinned: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for file, fetched in _verified_files(names, kind, progress, skipped):
        sha256 = fetched.sha256 or file_sha256(fetched.path)
        write_pin(file.source.url, sha256, fetched.path.stat().st_size, pins_file)
        pinned[file.key] = sha256
    return pinned, skipped
