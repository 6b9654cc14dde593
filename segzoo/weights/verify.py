"""Re-hash the weights cache against the registry's pins and the lock file: catches bit rot and tampering.

A load re-hashes a cached file only when its size or mtime changed, so bytes
altered in place with both kept (bit rot, or ``os.utime``) pass unnoticed
until :func:`verify_cache` (``segzoo verify``) or ``SEGZOO_VERIFY=always``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from segzoo.weights.cache import ChecksumLock, cache_dir, file_sha256
from segzoo.zoo.records import WeightSource

log = logging.getLogger(__name__)

Status = Literal["ok", "mismatch", "unrecorded", "not cached"]


@dataclass(frozen=True)
class CacheCheck:
    """The verdict on one cached file: ``ok``, ``mismatch`` (removed unless asked not to), ``unrecorded``
    (no pin and no first-use record to check it against) or ``not cached``."""

    url: str
    path: Path
    status: Status
    detail: str = ""


def verify_cache(
    sources: Iterable[WeightSource] = (), all_recorded: bool = False, remove: bool = True
) -> list[CacheCheck]:
    """Re-hash the cached files of ``sources`` (and, with ``all_recorded``, of every source the lock file
    records) and their safetensors copies against the pins and the lock; with ``remove``, delete what does
    not match. A pin wins over a first-use record."""
    root = cache_dir()
    records = ChecksumLock(root).records()
    by_url: dict[str, WeightSource | None] = dict.fromkeys(records) if all_recorded else {}
    by_url.update({s.url: s for s in sources if not s.is_hf_hub})
    checks = []
    for url, source in by_url.items():
        record = records.get(url) or {}
        name = record.get("file") or (source.filename if source else url.rsplit("/", 1)[-1])
        path = root / name
        if not path.is_file():
            checks.append(CacheCheck(url, path, "not cached"))
            continue
        pinned = source.sha256 if source is not None else None
        check = _check(url, path, pinned or record.get("sha256"), "pin" if pinned else "lock", remove)
        checks.append(check)
        derived = record.get("derived")
        copy = path.parent / derived["file"] if derived else None
        if copy is not None and copy.is_file():
            if check.status == "mismatch" and remove:  # made from a file that is no longer trusted
                copy.unlink()
            else:
                checks.append(_check(url, copy, derived.get("sha256"), "lock", remove))
    return checks


def _check(url: str, path: Path, expected: str | None, authority: str, remove: bool) -> CacheCheck:
    if expected is None:
        return CacheCheck(url, path, "unrecorded", "no pinned or recorded sha256 to check it against")
    actual = file_sha256(path)
    if actual == expected:
        return CacheCheck(url, path, "ok", f"sha256 {actual}")
    detail = f"sha256 {actual}, the {authority} says {expected}"
    if remove:
        path.unlink()
        detail += "; removed (the next load fetches it again)"
    log.warning("%s: %s", path, detail)
    return CacheCheck(url, path, "mismatch", detail)
