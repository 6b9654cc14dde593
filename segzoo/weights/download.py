"""Download checkpoints into a local cache, verified, never leaving a partial file under the final name."""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

import requests
import torch
from tqdm.auto import tqdm

from segzoo.zoo.records import WeightSource

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
TIMEOUT_S = (10, 60)  # connect, read


class WeightsDownloadError(RuntimeError):
    """The weights could not be fetched; the message says how to provide them by hand."""


class ChecksumMismatchError(RuntimeError):
    """A downloaded file does not have the sha256 the registry pins."""


def cache_dir() -> Path:
    """Where downloaded weights live: ``$SEGZOO_CACHE``, else ``<torch hub dir>/segzoo``."""
    root = os.environ.get("SEGZOO_CACHE")
    return Path(root) if root else Path(torch.hub.get_dir()) / "segzoo"


def source_url(source: WeightSource) -> str:
    """The URL to fetch: the source's own, or the same file name under ``$SEGZOO_MIRROR``."""
    mirror = os.environ.get("SEGZOO_MIRROR")
    return f"{mirror.rstrip('/')}/{source.filename}" if mirror else source.url


def fetch_weights(source: WeightSource, progress: bool = True) -> Path:
    """Return the cached file of ``source``, downloading and verifying it first if needed."""
    target = cache_dir() / source.filename
    if target.is_file():
        log.info("using cached weights %s", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    url = source_url(source)
    log.info("downloading %s to %s", url, target)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{source.filename}.", suffix=".partial")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _stream(url, out, source, target, progress)
        _verify(source, url, digest, tmp.stat().st_size)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _stream(url: str, out: BinaryIO, source: WeightSource, target: Path, progress: bool) -> str:
    sha = hashlib.sha256()
    try:
        with requests.get(url, stream=True, timeout=TIMEOUT_S) as response:
            response.raise_for_status()
            total = int(response.headers.get("Content-Length", 0)) or source.size
            with tqdm(total=total, unit="B", unit_scale=True, desc=source.filename, disable=not progress) as bar:
                for chunk in response.iter_content(CHUNK_BYTES):
                    out.write(chunk)
                    sha.update(chunk)
                    bar.update(len(chunk))
    except requests.RequestException as err:
        raise WeightsDownloadError(
            f"could not download {url}: {err}\n"
            f"To load these weights offline, fetch {source.url} on a machine with network access and "
            f"either put it at {target} (set SEGZOO_CACHE to change the folder) or pass "
            f"checkpoint_path=<file> to segzoo.create_model (--checkpoint <file> on the command line)."
        ) from err
    return sha.hexdigest()


def _verify(source: WeightSource, url: str, sha256: str, size: int) -> None:
    if source.size is not None and size != source.size:
        raise ChecksumMismatchError(f"{url}: expected {source.size} bytes, got {size}; the file was not cached")
    if source.sha256 is None:
        log.info("%s has no pinned sha256 (got %s); it is checked by a strict load instead", url, sha256)
    elif sha256 != source.sha256:
        raise ChecksumMismatchError(
            f"{url}: sha256 mismatch, expected {source.sha256}, got {sha256}; the file was not cached"
        )
