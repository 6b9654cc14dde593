"""Put a weight source's file in the local cache, verified, once, whatever other processes do.

Where the bytes come from, in order: the cache; ``$SEGZOO_MIRROR`` (a local
folder or a base URL holding the same file names, and the ``manifest.json``
that ``segzoo download`` writes, whose sha256 and size a copy must match); the
source's own URL (a ``google-drive`` source's through
:mod:`segzoo.weights.gdrive`, whose refusals become manual downloads). A
``manual`` source (a share page behind a login) is never downloaded: its file
must be put in the cache or a mirror by a person, and the error says how.
``SEGZOO_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` rules out the network.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import segzoo.weights.gdrive as gdrive
import segzoo.weights.hf_hub as hf_hub
from segzoo.weights.cache import ChecksumLock, cache_dir, exclusive, file_sha256
from segzoo.weights.download import (
    CHUNK_BYTES,
    SMALL_FILE_MAX_BYTES,
    discard_partial,
    download,
    partial_path,
    read_small_file,
)
from segzoo.weights.errors import ChecksumMismatchError, WeightsError, WeightsUnavailableError
from segzoo.zoo.records import WeightSource

log = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on"}
MANIFEST_NAME = "manifest.json"


def offline() -> bool:
    """Whether ``SEGZOO_OFFLINE`` or ``HF_HUB_OFFLINE`` forbids network access."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("SEGZOO_OFFLINE", "HF_HUB_OFFLINE"))


def verify_always() -> bool:
    """Whether ``SEGZOO_VERIFY=always`` asks to re-hash cached files on every load."""
    value = os.environ.get("SEGZOO_VERIFY", "").strip().lower()
    if value not in ("", "always", "changed"):
        raise WeightsError(f"SEGZOO_VERIFY={value!r} is not valid: use 'always' or 'changed' (the default)")
    return value == "always"


class ManualDownloadRequired(WeightsUnavailableError):
    """The file is published where only a person can fetch it; the message says where and how."""


@dataclass(frozen=True)
class FetchedFile:
    """A file ready to load; ``sha256`` is its hash when this call computed or checked it."""

    path: Path
    sha256: str | None


@dataclass(frozen=True)
class _Expected:
    """What a copy must be: hashes and sizes from the pins or the lock, and from a mirror's manifest."""

    sha256: str | None
    size: int | None
    manifest: str | None = None  # where the manifest entry came from
    manifest_sha256: str | None = None
    manifest_size: int | None = None

    def problem(self, sha256: str, size: int) -> str | None:
        if self.size is not None and size != self.size:
            return f"expected {self.size} bytes, got {size}"
        if self.sha256 is not None and sha256 != self.sha256:
            return f"sha256 mismatch: expected {self.sha256}, got {sha256}"
        if self.manifest_size is not None and size != self.manifest_size:
            return f"{self.manifest} says {self.manifest_size} bytes, got {size}"
        if self.manifest_sha256 is not None and sha256 != self.manifest_sha256:
            return f"sha256 mismatch: {self.manifest} says {self.manifest_sha256}, got {sha256}"
        return None


def fetch_weights(source: WeightSource, progress: bool | None = None, verify: bool | None = None) -> FetchedFile:
    """The local file of ``source``, fetched and verified if the cache does not hold a good copy.

    A cached file is re-hashed when its size or mtime changed since it was
    verified, or on every call with ``verify`` (default: ``SEGZOO_VERIFY``).
    """
    if source.is_hf_hub:
        return FetchedFile(hf_hub.download_file(source.url, hf_hub.WEIGHTS_NAME, local_only=offline()), None)
    verify = verify_always() if verify is None else verify
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    target = root / source.filename
    lock = ChecksumLock(root)
    with exclusive(target.with_name(target.name + ".lock"), f"fetching {source.url}", watch=partial_path(target)):
        expected = lock.expected_sha256(source)
        if target.is_file():
            cached = _check_cached(source, target, expected, lock, verify)
            if cached is not None:
                return cached
        sha256 = _obtain(source, target, expected, progress)
        if expected is not None:
            lock.record(source, target, sha256)
        return FetchedFile(target, sha256)


def _check_cached(
    source: WeightSource, target: Path, expected: str | None, lock: ChecksumLock, verify: bool
) -> FetchedFile | None:
    if expected is None:
        log.info("using cached %s (no checksum known yet)", target)
        return FetchedFile(target, None)
    if not verify and lock.is_unchanged(source, target, expected):
        log.info("using cached %s", target)
        return FetchedFile(target, expected)
    actual = file_sha256(target)
    if actual == expected:
        lock.record(source, target, actual)
        return FetchedFile(target, actual)
    log.warning("cached %s was altered (sha256 %s, expected %s); removing it", target, actual, expected)
    target.unlink()
    return None


def _mirror() -> str:
    return os.environ.get("SEGZOO_MIRROR", "").strip()


def _is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def manual_instructions(source: WeightSource, target: Path) -> str:
    """How a person gets a ``manual`` source's file to where segzoo looks for it."""
    code = f" (extraction code {source.access_code})" if source.access_code else ""
    return (
        f"{source.filename} needs a person to download it: open {source.url}{code} in a browser, download the "
        f"checkpoint and save it as {target} (SEGZOO_CACHE sets the folder), or put it under that name in the "
        f"folder SEGZOO_MIRROR points to, or pass checkpoint_path=<file> to segzoo.create_model."
    )


def _obtain(source: WeightSource, target: Path, expected_sha256: str | None, progress: bool | None) -> str:
    """Bring the file to ``target`` through its partial file; returns its sha256."""
    mirror = _mirror()
    if mirror and not _is_url(mirror):
        expected = _Expected(expected_sha256, source.size, *_manifest_entry(mirror, source))
        origin = Path(mirror) / source.filename
        if not origin.is_file() and source.kind == "manual":
            raise ManualDownloadRequired(
                f"the mirror folder has no {source.filename}. " + manual_instructions(source, target)
            )
        sha256, size = _copy_from_folder(origin, target)
        _verify(source, str(origin), target, expected, sha256, size)
    elif source.kind == "manual" and not mirror:
        raise ManualDownloadRequired(manual_instructions(source, target))
    elif offline():
        message = (
            f"segzoo is offline (SEGZOO_OFFLINE / HF_HUB_OFFLINE) and {source.filename} is not cached. "
            f"Fetch {source.url} elsewhere and put it at {target}, or set SEGZOO_MIRROR to a folder holding "
            f"it (see `segzoo download`)."
        )
        if source.kind == "manual":
            raise ManualDownloadRequired(f"{message}\n{manual_instructions(source, target)}")
        raise WeightsUnavailableError(message)
    else:
        try:
            sha256 = _download_verified(source, target, expected_sha256, progress, mirror)
        except ManualDownloadRequired:
            raise
        except WeightsUnavailableError as err:
            if source.kind == "manual":  # the URL mirror lacks it: only a person can get it
                raise ManualDownloadRequired(f"{err}\n{manual_instructions(source, target)}") from err
            raise WeightsUnavailableError(
                f"{err}\nTo load these weights offline, fetch {source.url} where the network allows it and put "
                f"it at {target} (SEGZOO_CACHE sets the folder), or pass checkpoint_path=<file> to "
                f"segzoo.create_model."
            ) from err
    os.replace(partial_path(target), target)
    discard_partial(target)
    return sha256


def _download_verified(
    source: WeightSource, target: Path, expected_sha256: str | None, progress: bool | None, mirror: str
) -> str:
    """Download ``source`` (from the URL ``mirror`` if set) to its partial file and verify it; returns its sha256."""
    url = f"{mirror.rstrip('/')}/{source.filename}" if mirror else source.url
    log.info("downloading %s to %s", url, target)
    from_drive = source.kind == "google-drive" and not mirror
    fetch_once = (
        (lambda: gdrive.download(source, target, progress)) if from_drive else (lambda: download(url, target, progress))
    )
    expected = _Expected(expected_sha256, source.size, *_manifest_entry(mirror, source))
    try:
        result = fetch_once()
        try:
            _verify(source, url, target, expected, result.sha256, result.size)
        except ChecksumMismatchError:
            if not result.resumed:
                raise
            log.warning("resumed download of %s did not verify; downloading it again from the start", url)
            result = fetch_once()
            _verify(source, url, target, expected, result.sha256, result.size)
    except gdrive.GoogleDriveRefused as err:
        raise ManualDownloadRequired(f"{err}\n{manual_instructions(source, target)}") from err
    return result.sha256


def _manifest_entry(mirror: str, source: WeightSource) -> tuple[str | None, str | None, int | None]:
    """(where, sha256, size) of ``source``'s file in the mirror's ``manifest.json``, or Nones without one."""
    if not mirror:
        return None, None, None
    if _is_url(mirror):
        where = f"{mirror.rstrip('/')}/{MANIFEST_NAME}"
        if offline():
            return None, None, None
        text = read_small_file(where, "the mirror's manifest")
        if text is None:
            return None, None, None
    else:
        path = Path(mirror) / MANIFEST_NAME
        if not path.is_file():
            return None, None, None
        if path.stat().st_size > SMALL_FILE_MAX_BYTES:
            raise WeightsUnavailableError(
                f"the mirror's manifest {path} has {path.stat().st_size} bytes, more than the "
                f"{SMALL_FILE_MAX_BYTES >> 20} MiB such a file may have; fix or remove it"
            )
        where, text = str(path), path.read_bytes()
    try:
        manifest = json.loads(text)
        entries = [e for e in manifest.values() if e.get("url") == source.url or e.get("file") == source.filename]
    except (ValueError, AttributeError) as err:
        raise WeightsUnavailableError(
            f"the mirror's manifest {where} is not what `segzoo download` writes ({err}); fix or remove it"
        ) from err
    if not entries:
        return None, None, None
    return where, entries[0].get("sha256"), entries[0].get("size")


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


def _verify(source: WeightSource, origin: str, target: Path, expected: _Expected, sha256: str, size: int) -> None:
    problem = expected.problem(sha256, size)
    if problem:
        discard_partial(target)
        raise ChecksumMismatchError(f"{source.filename} from {origin}: {problem}; nothing was cached")
