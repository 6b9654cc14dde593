"""The local weights cache and its checksum lock file (trust on first use).

Until the registry pins a file's sha256, the first download that loads
strictly records its hash in ``checksums.lock.json`` in the cache; later loads,
re-downloads and mirror copies must match it. Each record also keeps the
file's size and mtime, so a cache hit is re-hashed only when the file changed
(or always, with ``SEGZOO_VERIFY=always``), and may name a ``derived``
safetensors copy of a verified ``.pth`` file, with the copy's own sha256,
which later loads read instead because it loads much faster than a pickle.

Processes share the cache through file locks (:func:`exclusive`), whose
holder writes who it is beside the lock, so that a process that waits too long
can say who holds it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import filelock
import torch

from segzoo.weights.download import DownloadLimits
from segzoo.weights.errors import WeightsUnavailableError
from segzoo.zoo.records import WeightSource

log = logging.getLogger(__name__)

LOCK_FILE_NAME = "checksums.lock.json"
HASH_CHUNK_BYTES = 1 << 22
LOCK_POLL_S = 0.5


def cache_dir() -> Path:
    """Where downloaded weights live: ``$SEGZOO_CACHE``, else ``<torch hub dir>/segzoo``."""
    root = os.environ.get("SEGZOO_CACHE")
    return Path(root) if root else Path(torch.hub.get_dir()) / "segzoo"


def holder_path(lock_path: Path) -> Path:
    """Where the process holding ``lock_path`` says who it is (pid, host, since when, doing what)."""
    return lock_path.with_name(lock_path.name + ".holder")


@contextmanager
def exclusive(lock_path: Path, doing: str, watch: Path | None = None) -> Iterator[None]:
    """Hold the file lock ``lock_path`` against other processes, recording who holds it and ``doing`` what.

    While another process holds it, wait as long as that process shows
    progress (a new holder, or the ``watch`` file, e.g. its partial download,
    changing) and at most ``SEGZOO_LOCK_TIMEOUT`` seconds without; then raise
    :class:`WeightsUnavailableError` naming the holder and how to clear a
    stale lock, so that a hung process never blocks the others for good.
    """
    patience = DownloadLimits.from_env().lock_patience_s
    lock = filelock.FileLock(str(lock_path))
    holder = holder_path(lock_path)
    seen, since = None, time.monotonic()
    while True:
        try:
            lock.acquire(timeout=LOCK_POLL_S)
            break
        except filelock.Timeout:
            now_seen = (_read_text(holder), _stat_or_none(watch))
            if now_seen != seen:
                seen, since = now_seen, time.monotonic()
            elif time.monotonic() - since >= patience:
                raise WeightsUnavailableError(_stuck_lock_message(lock_path, patience)) from None
    try:
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
            "doing": doing,
        }
        holder.write_text(json.dumps(record))
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _stat_or_none(path: Path | None) -> tuple[int, int] | None:
    try:
        return _signature(path) if path is not None else None
    except OSError:
        return None


def _stuck_lock_message(lock_path: Path, patience: float) -> str:
    try:
        holder = json.loads(_read_text(holder_path(lock_path)) or "")
        who = f"process {int(holder['pid'])} on host {holder['host']} ({holder['doing']}, since {holder['since']})"
    except (ValueError, TypeError, KeyError):
        holder, who = None, "another process, which left no record of who it is"
    stale = ""
    if holder is not None and holder["host"] == socket.gethostname() and not process_exists(int(holder["pid"])):
        stale = "; that process no longer runs, so the lock is stale"
    return (
        f"gave up waiting for the lock {lock_path} after {patience:g}s without progress: it is held by {who}"
        f"{stale}. If that process is gone or hung, stop it or delete {lock_path} to clear the lock; "
        f"SEGZOO_LOCK_TIMEOUT sets how long to wait (now {patience:g}s)."
    )


def process_exists(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (someone else's process counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _signature(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            sha.update(chunk)
    return sha.hexdigest()


class ChecksumLock:
    """The cache's record of verified files: ``{source url: {file, sha256, size, mtime_ns, trust}}``."""

    def __init__(self, root: Path) -> None:
        self.path = root / LOCK_FILE_NAME
        self._mutex_path = self.path.with_name(self.path.name + ".lock")

    def _read(self) -> dict[str, dict]:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def records(self) -> dict[str, dict]:
        """Every record, by source URL."""
        return self._read()

    def get(self, source: WeightSource) -> dict | None:
        return self._read().get(source.url)

    def expected_sha256(self, source: WeightSource) -> str | None:
        """The pinned hash, else the one recorded on first use, else ``None``."""
        record = self.get(source)
        return source.sha256 or (record["sha256"] if record else None)

    def is_unchanged(self, source: WeightSource, path: Path, sha256: str) -> bool:
        """Whether ``path`` is the file recorded with ``sha256`` and untouched since."""
        record = self.get(source)
        return bool(record) and record["sha256"] == sha256 and (record["size"], record["mtime_ns"]) == _signature(path)

    def derived_copy(self, source: WeightSource, path: Path, verify: bool = False) -> Path | None:
        """The recorded safetensors copy of ``path``, if it still has the sha256 recorded when it was written.

        The copy is re-hashed when its size or mtime changed, or always with
        ``verify``; a copy that no longer matches is removed (the caller
        rebuilds it from the verified original).
        """
        derived = (self.get(source) or {}).get("derived")
        if not derived or "sha256" not in derived:
            return None
        copy = path.with_name(derived["file"])
        if not copy.is_file():
            return None
        if not verify and _signature(copy) == (derived["size"], derived["mtime_ns"]):
            return copy
        actual = file_sha256(copy)
        if actual == derived["sha256"]:
            return copy
        log.warning(
            "the safetensors copy %s was altered (sha256 %s, recorded %s); removing it", copy, actual, derived["sha256"]
        )
        copy.unlink()
        return None

    def record(self, source: WeightSource, path: Path, sha256: str, derived: Path | None = None) -> None:
        """Record ``path`` as verified with ``sha256`` (and, optionally, its safetensors copy)."""
        stat = path.stat()
        trust = "pinned" if source.sha256 else "first-use"
        if trust == "first-use" and not self.get(source):
            log.warning(
                "%s has no pinned sha256; trusting it on first use and recording %s in %s",
                source.url,
                sha256,
                self.path,
            )
        with exclusive(self._mutex_path, f"recording the sha256 of {path}"):
            records = self._read()
            previous = records.get(source.url) or {}
            record = {
                "file": path.name,
                "sha256": sha256,
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "trust": trust,
            }
            if derived is not None:
                size, mtime_ns = _signature(derived)
                record["derived"] = {
                    "file": derived.name,
                    "sha256": file_sha256(derived),
                    "size": size,
                    "mtime_ns": mtime_ns,
                }
            elif previous.get("sha256") == sha256 and "derived" in previous:
                record["derived"] = previous["derived"]
            records[source.url] = record
            self._write(records)

    def _write(self, records: dict[str, dict]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        with os.fdopen(fd, "w") as f:
            json.dump(dict(sorted(records.items())), f, indent=2)
        os.replace(tmp, self.path)
