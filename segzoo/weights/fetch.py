"""Put a weight source's file in the local cache, verified, once, whatever other processes do.

Where the bytes come from, in order: the cache; ``$SEGZOO_MIRROR`` (a local
folder or a base URL holding the same file names); the source's own URL.
``SEGZOO_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` rules out the network.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from segzoo.weights import hf_hub
from segzoo.weights.cache import ChecksumLock, cache_dir, file_sha256
from segzoo.weights.download import CHUNK_BYTES, discard_partial, download, partial_path
from segzoo.weights.errors import ChecksumMismatchError, WeightsUnavailableError
from segzoo.zoo.records import WeightSource

log = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on"}


def offline() -> bool:
    """Whether ``SEGZOO_OFFLINE`` or ``HF_HUB_OFFLINE`` forbids network access."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("SEGZOO_OFFLINE", "HF_HUB_OFFLINE"))


@dataclass(frozen=True)
class FetchedFile:
    """A file ready to load; ``sha256`` is its hash when this call computed or checked it."""

    path: Path
    sha256: str | None


def fetch_weights(source: WeightSource, progress: bool | None = None) -> FetchedFile:
    """The local file of ``source``, fetched and verified if the cache does not hold a good copy."""
    if source.is_hf_hub:
        return FetchedFile(hf_hub.download_file(source.url, hf_hub.WEIGHTS_NAME, local_only=offline()), None)
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    target = root / source.filename
    lock = ChecksumLock(root)
    with FileLock(str(target) + ".lock"):
        expected = lock.expected_sha256(source)
        if target.is_file():
            cached = _check_cached(source, target, expected, lock)
            if cached is not None:
                return cached
        sha256 = _obtain(source, target, expected, progress)
        if expected is not None:
            lock.record(source, target, sha256)
        return FetchedFile(target, sha256)


def _check_cached(source: WeightSource, target: Path, expected: str | None, lock: ChecksumLock) -> FetchedFile | None:
    if expected is None:
        log.info("using cached %s (no checksum known yet)", target)
        return FetchedFile(target, None)
    if lock.is_unchanged(source, target, expected):
        log.info("using cached %s", target)
        return FetchedFile(target, expected)
    actual = file_sha256(target)
    if actual == expected:
        lock.record(source, target, actual)
        return FetchedFile(target, actual)
    log.warning("cached %s was altered (sha256 %s, expected %s); removing it", target, actual, expected)
    target.unlink()
    return None


def _obtain(source: WeightSource, target: Path, expected: str | None, progress: bool | None) -> str:
    """Bring the file to ``target`` through its partial file; returns its sha256."""
    mirror = os.environ.get("SEGZOO_MIRROR", "").strip()
    if mirror and not mirror.startswith(("http://", "https://")):
        sha256, size = _copy_from_folder(Path(mirror) / source.filename, target)
        _verify(source, str(Path(mirror) / source.filename), target, expected, sha256, size)
    else:
        if offline():
            raise WeightsUnavailableError(
                f"segzoo is offline (SEGZOO_OFFLINE / HF_HUB_OFFLINE) and {source.filename} is not cached. "
                f"Fetch {source.url} elsewhere and put it at {target}, or set SEGZOO_MIRROR to a folder holding "
                f"it (see `segzoo download`)."
            )
        url = f"{mirror.rstrip('/')}/{source.filename}" if mirror else source.url
        log.info("downloading %s to %s", url, target)
        try:
            result = download(url, target, progress)
            try:
                _verify(source, url, target, expected, result.sha256, result.size)
            except ChecksumMismatchError:
                if not result.resumed:
                    raise
                log.warning("resumed download of %s did not verify; downloading it again from the start", url)
                result = download(url, target, progress)
                _verify(source, url, target, expected, result.sha256, result.size)
        except WeightsUnavailableError as err:
            raise WeightsUnavailableError(
                f"{err}\nTo load these weights offline, fetch {source.url} where the network allows it and put "
                f"it at {target} (SEGZOO_CACHE sets the folder), or pass checkpoint_path=<file> to "
                f"segzoo.create_model (--checkpoint <file> on the command line)."
            ) from err
        sha256 = result.sha256
    os.replace(partial_path(target), target)
    discard_partial(target)
    return sha256


def _copy_from_folder(src: Path, target: Path) -> tuple[str, int]:
    if not src.is_file():
        raise WeightsUnavailableError(f"the mirror folder has no {src.name}: expected {src} (SEGZOO_MIRROR)")
    sha, size = hashlib.sha256(), 0
    with open(src, "rb") as fin, open(partial_path(target), "wb") as fout:
        while chunk := fin.read(CHUNK_BYTES):
            fout.write(chunk)
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


def _verify(source: WeightSource, origin: str, target: Path, expected: str | None, sha256: str, size: int) -> None:
    problem = None
    if source.size is not None and size != source.size:
        problem = f"expected {source.size} bytes, got {size}"
    elif expected is not None and sha256 != expected:
        problem = f"sha256 mismatch: expected {expected}, got {sha256}"
    if problem:
        discard_partial(target)
        raise ChecksumMismatchError(f"{source.filename} from {origin}: {problem}; nothing was cached")
