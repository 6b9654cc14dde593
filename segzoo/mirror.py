"""Maintainer and air-gap tools: fill a mirror folder with weights, pin checksums into the registry.

Both handle one file per entry, either its segmentation weights or the ImageNet
file its training starts from (:data:`SEGMENTATION_WEIGHTS`, :data:`IMAGENET_BACKBONES`):
each is fetched and proven to load strictly before it is copied or pinned. Both
try every file: one that cannot be fetched or loaded (a share page that needs
a person, no network, a file that does not fit) is set aside with the reason,
and the run goes on.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from segzoo.families import convert_imagenet_state_dict
from segzoo.registry import create_model, model_info
from segzoo.weights import FetchedFile, WeightsError, fetch_weights, load_imagenet_weights
from segzoo.weights.cache import file_sha256
from segzoo.weights.fetch import MANIFEST_NAME, ManualDownloadRequired
from segzoo.zoo.pins import write_pin
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
    """Which file of each entry the tools handle."""

    files: Callable[[list[str], bool | None], Iterator[MirroredFile]]


@dataclass(frozen=True)
class Unfinished:
    """A file that was not copied or pinned, and why; ``needs_a_person`` when only a person can fetch it."""

    key: str
    source: WeightSource
    reason: str
    needs_a_person: bool


@dataclass(frozen=True)
class Outcome:
    """What a run did: the sha256 of each file copied or pinned, by key, and the files it set aside."""

    done: dict[str, str]
    unfinished: tuple[Unfinished, ...]


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


SEGMENTATION_WEIGHTS = FileKind(_segmentation_files)
IMAGENET_BACKBONES = FileKind(_imagenet_files)


def _verified_files(
    names: list[str], kind: FileKind, progress: bool | None, unfinished: list[Unfinished]
) -> Iterator[tuple[MirroredFile, FetchedFile]]:
    """Each file of ``kind`` for ``names``, fetched and proven to load; those that are not go to ``unfinished``."""
    for file in kind.files(names, progress):
        try:
            yield file, file.verified()
        except WeightsError as err:
            log.info("%s set aside: %s", file.key, err)
            unfinished.append(Unfinished(file.key, file.source, str(err), isinstance(err, ManualDownloadRequired)))


def download_to_folder(
    names: list[str], folder: Path, progress: bool | None = None, kind: FileKind = SEGMENTATION_WEIGHTS
) -> Outcome:
    """Copy the files of ``names`` into ``folder`` with a ``manifest.json``; usable as ``SEGZOO_MIRROR``.

    Every file is tried; the manifest is rewritten after each copy, so an
    interrupted run keeps what it did. Files that could not be fetched or
    loaded are set aside in the outcome (share-page entries whose file is not
    in the cache yet among them; those in the cache are copied like the others).
    """
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    _write_manifest(manifest_path, manifest)
    done: dict[str, str] = {}
    unfinished: list[Unfinished] = []
    for file, fetched in _verified_files(names, kind, progress, unfinished):
        copy = folder / file.source.filename
        shutil.copyfile(fetched.path, copy)
        done[file.key] = file_sha256(copy)
        manifest[file.manifest_key] = {
            "file": file.source.filename,
            "url": file.source.url,
            "sha256": done[file.key],
            "size": copy.stat().st_size,
        }
        _write_manifest(manifest_path, manifest)
        log.info("%s -> %s", file.key, copy)
    return Outcome(done, tuple(unfinished))


def _write_manifest(path: Path, manifest: dict[str, dict]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")
    os.replace(tmp, path)


def pin(
    names: list[str], pins_file: Path, progress: bool | None = None, kind: FileKind = SEGMENTATION_WEIGHTS
) -> Outcome:
    """Download, strictly load and record sha256 and size of each file of ``names`` in ``pins_file``.

    Every file is tried; the outcome has the pinned hashes by key (entry name,
    or URL for the ImageNet files) and the files set aside.
    """
    done: dict[str, str] = {}
    unfinished: list[Unfinished] = []
    for file, fetched in _verified_files(names, kind, progress, unfinished):
        sha256 = fetched.sha256 or file_sha256(fetched.path)
        write_pin(file.source.url, sha256, fetched.path.stat().st_size, pins_file)
        done[file.key] = sha256
    return Outcome(done, tuple(unfinished))
