"""Maintainer and air-gap tools: fill a mirror folder with weights, pin checksums into the registry."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from segzoo.registry import create_model, model_info
from segzoo.weights import FetchedFile, fetch_weights
from segzoo.weights.cache import file_sha256
from segzoo.weights.fetch import MANIFEST_NAME, ManualDownloadRequired
from segzoo.zoo.pins import PINS_FILE, write_pin
from segzoo.zoo.records import ModelInfo, WeightSource

log = logging.getLogger(__name__)


def _url_source(info: ModelInfo) -> WeightSource:
    """The entry's original (http) weight source: the file a mirror serves and a pin is about."""
    return next(w for w in info.weights if not w.is_hf_hub)


def _verified_file(info: ModelInfo, progress: bool | None) -> tuple[WeightSource, FetchedFile]:
    """Fetch the entry's file and prove it loads strictly into the architecture."""
    source = _url_source(info)
    fetched = fetch_weights(source, progress)
    create_model(info.name, checkpoint_path=fetched.path)  # raises unless every tensor fits
    return source, fetched


def download_to_folder(
    names: list[str], folder: Path, progress: bool | None = None
) -> tuple[Path, dict[str, str]]:
    """Copy the weights of ``names`` into ``folder`` with a ``manifest.json``; usable as ``SEGZOO_MIRROR``.

    Returns the manifest's path and, for entries published on share pages
    that need a person (``manual`` sources) whose file is not in the cache
    yet, what to do; those already in the cache are copied like the others.
    """
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manual = {}
    for name in names:
        info = model_info(name)
        try:
            source, fetched = _verified_file(info, progress)
        except ManualDownloadRequired as err:
            manual[info.name] = str(err)
            continue
        shutil.copyfile(fetched.path, folder / source.filename)
        manifest[info.name] = {
            "file": source.filename,
            "url": source.url,
            "sha256": file_sha256(folder / source.filename),
            "size": (folder / source.filename).stat().st_size,
        }
        log.info("%s -> %s", info.name, folder / source.filename)
    manifest_path.write_text(json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")
    return manifest_path, manual


def pin(
    names: list[str], pins_file: Path = PINS_FILE, progress: bool | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """Download, strictly load and record sha256 and size of each entry's file in the registry's pins.

    Returns the pinned hashes by name, and for ``manual`` entries whose file is
    not in the cache yet, what a person must do first.
    """
    pinned, manual = {}, {}
    for name in names:
        info = model_info(name)
        try:
            source, fetched = _verified_file(info, progress)
        except ManualDownloadRequired as err:
            manual[info.name] = str(err)
            continue
        sha256 = fetched.sha256 or file_sha256(fetched.path)
        write_pin(source.url, sha256, fetched.path.stat().st_size, pins_file)
        pinned[info.name] = sha256
    return pinned, manual
