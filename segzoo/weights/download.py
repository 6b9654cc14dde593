"""HTTP downloads that resume, retry, hash while streaming, and never pass a partial file off as whole.

Bytes go to ``<file>.partial``. A later attempt resumes it with a ``Range``
request only when the server confirms, through ``If-Range`` and the validator
(ETag or Last-Modified) saved beside the partial file, that it is still the
same file; otherwise the download restarts. Proxies come from the environment
(``HTTPS_PROXY``, ``NO_PROXY`` ...), as ``requests`` does.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from tqdm.auto import tqdm

from segzoo.weights.errors import WeightsUnavailableError

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 16
TIMEOUT_S = (10.0, 60.0)  # connect, read
RETRIES = 4
BACKOFF_S = 0.5  # doubled after each failed attempt

_RETRYABLE = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class _RetryableStatus(requests.RequestException):
    """A 5xx answer, worth another try."""


@dataclass(frozen=True)
class Download:
    sha256: str
    size: int
    resumed: bool


def partial_path(target: Path) -> Path:
    return target.with_name(target.name + ".partial")


def _validator_path(partial: Path) -> Path:
    return partial.with_name(partial.name + ".json")


def discard_partial(target: Path) -> None:
    """Remove a partial download of ``target`` and its validator."""
    partial = partial_path(target)
    partial.unlink(missing_ok=True)
    _validator_path(partial).unlink(missing_ok=True)


def download(url: str, target: Path, progress: bool | None = None) -> Download:
    """Fetch ``url`` into ``partial_path(target)``, resuming what an earlier attempt left.

    ``progress=None`` shows a progress bar only on a terminal. Connection
    errors, timeouts and 5xx answers are retried ``RETRIES`` times with
    exponential backoff; the caller verifies the result and renames it.
    """
    failures = 0
    with requests.Session() as session:
        while True:
            try:
                return _attempt(session, url, target, progress)
            except (*_RETRYABLE, _RetryableStatus) as err:
                failures += 1
                if failures > RETRIES:
                    raise WeightsUnavailableError(f"could not download {url} after {failures} attempts: {err}") from err
                delay = BACKOFF_S * 2 ** (failures - 1)
                log.warning("download of %s failed (%s); retrying in %.1fs", url, err, delay)
                time.sleep(delay)
            except requests.RequestException as err:
                raise WeightsUnavailableError(f"could not download {url}: {err}") from err


def _attempt(session: requests.Session, url: str, target: Path, progress: bool | None) -> Download:
    partial = partial_path(target)
    validator_file = _validator_path(partial)
    offset = partial.stat().st_size if partial.is_file() else 0
    validator = _saved_validator(validator_file, url) if offset else None
    headers = {"Range": f"bytes={offset}-", "If-Range": validator} if validator else {}
    with session.get(url, headers=headers, stream=True, timeout=TIMEOUT_S) as response:
        if response.status_code >= 500:
            raise _RetryableStatus(f"{response.status_code} {response.reason} for {url}")
        if response.status_code == 416:  # the partial file is not a prefix of this file
            discard_partial(target)
            raise _RetryableStatus(f"416 for a resumed download of {url}; restarting")
        response.raise_for_status()
        resumed = bool(validator) and response.status_code == 206 and _range_start(response) == offset
        sha = hashlib.sha256()
        if resumed:
            log.info("resuming %s at byte %d", url, offset)
            with open(partial, "rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    sha.update(chunk)
        else:
            offset = 0
        new_validator = _strong_validator(response)
        if new_validator:
            validator_file.write_text(json.dumps({"url": url, "validator": new_validator}))
        else:
            validator_file.unlink(missing_ok=True)
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length else None
        written = offset
        with open(partial, "ab" if resumed else "wb") as out, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, desc=target.name,
            disable=None if progress is None else not progress,
        ) as bar:
            for chunk in response.iter_content(CHUNK_BYTES):
                out.write(chunk)
                sha.update(chunk)
                bar.update(len(chunk))
                written += len(chunk)
        if total is not None and written != total:
            raise requests.exceptions.ChunkedEncodingError(f"{url}: got {written} of {total} bytes")
    return Download(sha.hexdigest(), written, resumed)


def _saved_validator(path: Path, url: str) -> str | None:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved.get("validator") if saved.get("url") == url else None


def _strong_validator(response: requests.Response) -> str | None:
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


def _range_start(response: requests.Response) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None
