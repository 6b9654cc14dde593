"""HTTP downloads that resume, retry, hash while streaming, end in bounded time, and never pass a partial file off
as whole.

Bytes go to ``<file>.partial``. A later attempt resumes it with a ``Range``
request only when the server confirms, through ``If-Range`` and the validator
(ETag or Last-Modified) saved beside the partial file, that it is still the
same file; otherwise the download restarts. Proxies come from the environment
(``HTTPS_PROXY``, ``NO_PROXY`` ...), as ``requests`` does.

Every download ends in bounded time (:class:`DownloadLimits`, set through
environment variables): a server that accepts and never answers fails after
``retries + 1`` waits of ``timeout`` seconds (about a minute by default), and
one that trickles bytes is aborted by a low-speed limit, like curl's
``--speed-limit``/``--speed-time``. On top of those, each attempt has a
wall-clock deadline (:mod:`segzoo.weights.http`): a short one for connecting
and receiving the status line and headers, then a long one for the whole
body; small files (a mirror's manifest) must arrive whole, and under a size
cap, within the short one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import requests
import urllib3
from tqdm.auto import tqdm

import segzoo.weights.http as http
from segzoo.weights.errors import WeightsError, WeightsUnavailableError

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 16
BACKOFF_S = 0.5  # doubled after each failed attempt
SMALL_FILE_MAX_BYTES = 4 << 20  # a mirror's manifest.json is a few kB; never read more than this of one


@dataclass(frozen=True)
class DownloadLimits:
    """How long a download may wait and how slowly it may go; read from the environment at each download.

    ``timeout_s`` (``SEGZOO_DOWNLOAD_TIMEOUT``): seconds to wait for a
    connection and, after it, for each next piece of data. ``retries``
    (``SEGZOO_DOWNLOAD_RETRIES``): further attempts after a connection error,
    timeout, 5xx answer or too slow a transfer, resuming what arrived.
    ``min_speed`` (``SEGZOO_DOWNLOAD_MIN_SPEED``, bytes/s; 0 turns the limit
    off) over ``speed_time_s`` (``SEGZOO_DOWNLOAD_SPEED_TIME``): an attempt
    that averages less over that long is aborted. ``response_deadline_s``
    (``SEGZOO_DOWNLOAD_RESPONSE_DEADLINE``): wall-clock seconds an attempt may
    take to connect and receive the status line and headers, or a small file
    whole. ``deadline_s`` (``SEGZOO_DOWNLOAD_DEADLINE``): wall-clock seconds
    one attempt may take in all, body included (the next attempt resumes).
    ``lock_patience_s`` (``SEGZOO_LOCK_TIMEOUT``): how long to wait for
    another process's file lock while it shows no progress.
    """

    timeout_s: float = 20.0
    retries: int = 2
    min_speed: float = 1024.0
    speed_time_s: float = 30.0
    response_deadline_s: float = 30.0
    deadline_s: float = 1800.0
    lock_patience_s: float = 120.0

    _ENV = {
        "timeout_s": "SEGZOO_DOWNLOAD_TIMEOUT",
        "retries": "SEGZOO_DOWNLOAD_RETRIES",
        "min_speed": "SEGZOO_DOWNLOAD_MIN_SPEED",
        "speed_time_s": "SEGZOO_DOWNLOAD_SPEED_TIME",
        "response_deadline_s": "SEGZOO_DOWNLOAD_RESPONSE_DEADLINE",
        "deadline_s": "SEGZOO_DOWNLOAD_DEADLINE",
        "lock_patience_s": "SEGZOO_LOCK_TIMEOUT",
    }

    @classmethod
    def from_env(cls) -> DownloadLimits:
        values = {}
        for field_name, variable in cls._ENV.items():
            raw = os.environ.get(variable, "").strip()
            if not raw:
                continue
            convert = int if field_name == "retries" else float
            try:
                value = convert(raw)
            except ValueError:
                value = -1
            if value < 0 or (field_name not in ("retries", "min_speed") and value == 0):
                kind = "a whole number >= 0" if convert is int else "a positive number"
                raise WeightsError(f"{variable}={raw!r} is not valid: expected {kind}")
            values[field_name] = value
        return cls(**values)

    @property
    def worst_case_stall_s(self) -> float:
        """How long a server that never answers can hold a download: every attempt's wait plus the backoffs."""
        return (self.retries + 1) * self.timeout_s + self._backoffs_s

    @property
    def worst_case_trickled_response_s(self) -> float:
        """How long a server that sends its headers byte by byte can hold a download: every attempt's deadline."""
        return (self.retries + 1) * self.response_deadline_s + self._backoffs_s

    @property
    def _backoffs_s(self) -> float:
        return sum(BACKOFF_S * 2**i for i in range(self.retries))


_RETRYABLE = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class _RetryableStatus(requests.RequestException):
    """A 5xx answer, worth another try."""


class _TooSlow(requests.RequestException):
    """The transfer averaged less than the low-speed limit; worth another try, resuming."""


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


def download(
    url: str,
    target: Path,
    progress: bool | None = None,
    *,
    session: requests.Session | None = None,
    resume_key: str | None = None,
    check: Callable[[requests.Response], None] | None = None,
) -> Download:
    """Fetch ``url`` into ``partial_path(target)``, resuming what an earlier attempt left.

    ``progress=None`` shows a progress bar only on a terminal. Connection
    errors, timeouts, 5xx answers and transfers below the speed limit are
    retried with exponential backoff, within :class:`DownloadLimits`; the
    caller verifies the result and renames it.

    For hosts that hand out a fresh link for each download (Google Drive):
    ``session`` brings the cookies that link needs; ``resume_key`` names the
    file for resuming instead of the URL, so a partial file from an earlier
    link may be resumed (still only if the server confirms the validator);
    ``check(response)`` sees each answer before any byte is written and may
    raise to refuse it (a web page in place of the file) or to take it back
    to the caller (a confirmation page leading to another link).
    """
    limits = DownloadLimits.from_env()
    failures = 0
    with nullcontext(session) if session is not None else http.session() as session:
        while True:
            try:
                return _attempt(session, url, target, progress, limits, resume_key or url, check)
            except (*_RETRYABLE, _RetryableStatus, _TooSlow) as err:
                failures += 1
                if failures > limits.retries:
                    raise WeightsUnavailableError(f"could not download {url} after {failures} attempts: {err}") from err
                delay = BACKOFF_S * 2 ** (failures - 1)
                log.warning("download of %s failed (%s); retrying in %.1fs", url, err, delay)
                time.sleep(delay)
            except requests.RequestException as err:
                raise WeightsUnavailableError(f"could not download {url}: {err}") from err


def _pieces(response: requests.Response):
    """The body as it arrives: each piece as soon as the socket has some, so that a trickle is noticed."""
    try:
        while piece := response.raw.read1(CHUNK_BYTES, decode_content=True):
            yield piece
    except urllib3.exceptions.ReadTimeoutError as err:
        raise requests.Timeout(str(err)) from err
    except urllib3.exceptions.HTTPError as err:
        raise requests.exceptions.ChunkedEncodingError(str(err)) from err


def _attempt(
    session: requests.Session,
    url: str,
    target: Path,
    progress: bool | None,
    limits: DownloadLimits,
    resume_key: str,
    check: Callable[[requests.Response], None] | None,
) -> Download:
    partial = partial_path(target)
    validator_file = _validator_path(partial)
    offset = partial.stat().st_size if partial.is_file() else 0
    validator = _saved_validator(validator_file, resume_key) if offset else None
    headers = {"Range": f"bytes={offset}-", "If-Range": validator} if validator else {}
    with (
        http.deadline(limits.response_deadline_s, _response_late(url, limits)) as watchdog,
        session.get(url, headers=headers, stream=True, timeout=limits.timeout_s) as response,
    ):
        watchdog.check()  # cut-off headers can look complete
        if response.status_code >= 500:
            raise _RetryableStatus(f"{response.status_code} {response.reason} for {url}")
        if response.status_code == 416:  # the partial file is not a prefix of this file
            discard_partial(target)
            raise _RetryableStatus(f"416 for a resumed download of {url}; restarting")
        if check is not None:
            check(response)
        response.raise_for_status()
        watchdog.extend(
            limits.deadline_s,
            f"{url} did not arrive within {limits.deadline_s:g}s, the limit for one attempt "
            f"(SEGZOO_DOWNLOAD_DEADLINE raises it; the next attempt resumes)",
        )
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
            validator_file.write_text(json.dumps({"url": resume_key, "validator": new_validator}))
        else:
            validator_file.unlink(missing_ok=True)
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length else None
        written = offset
        window_start, window_bytes = time.monotonic(), 0
        with (
            open(partial, "ab" if resumed else "wb") as out,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=target.name,
                disable=None if progress is None else not progress,
            ) as bar,
        ):
            for piece in _pieces(response):
                watchdog.check()  # a shut-down socket may still deliver what arrives after
                out.write(piece)
                sha.update(piece)
                bar.update(len(piece))
                written += len(piece)
                window_bytes += len(piece)
                elapsed = time.monotonic() - window_start
                if elapsed >= limits.speed_time_s:
                    if window_bytes / elapsed < limits.min_speed:
                        raise _TooSlow(
                            f"{url} arrived at {window_bytes / elapsed:.0f} bytes/s over {elapsed:.0f}s, below the "
                            f"limit of {limits.min_speed:.0f} bytes/s (SEGZOO_DOWNLOAD_MIN_SPEED, "
                            f"SEGZOO_DOWNLOAD_SPEED_TIME)"
                        )
                    window_start, window_bytes = time.monotonic(), 0
        if total is not None and written != total:
            raise requests.exceptions.ChunkedEncodingError(f"{url}: got {written} of {total} bytes")
    return Download(sha.hexdigest(), written, resumed)


def _response_late(url: str, limits: DownloadLimits) -> str:
    return (
        f"{url} did not answer within {limits.response_deadline_s:g}s: connecting and receiving the status line "
        f"and headers (or a small file whole) took longer (SEGZOO_DOWNLOAD_RESPONSE_DEADLINE raises the limit)"
    )


def read_small_file(url: str, what: str) -> bytes | None:
    """The body of a small file such as a mirror's manifest, ``None`` if the server has none (404).

    It must arrive whole within the response deadline and under
    :data:`SMALL_FILE_MAX_BYTES`; any other failure raises
    :class:`WeightsUnavailableError` naming ``what`` and the limit.
    """
    limits = DownloadLimits.from_env()
    try:
        with (
            http.session() as session,
            http.deadline(limits.response_deadline_s, _response_late(url, limits)) as watchdog,
            session.get(url, stream=True, timeout=limits.timeout_s) as response,
        ):
            watchdog.check()
            if response.status_code == 404:
                return None
            response.raise_for_status()
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > SMALL_FILE_MAX_BYTES:
                raise WeightsUnavailableError(_too_large(what, url, f"announces {int(length)} bytes"))
            body = bytearray()
            for piece in _pieces(response):
                watchdog.check()
                body += piece
                if len(body) > SMALL_FILE_MAX_BYTES:
                    raise WeightsUnavailableError(_too_large(what, url, f"sent more than {SMALL_FILE_MAX_BYTES} bytes"))
    except requests.RequestException as err:
        raise WeightsUnavailableError(f"could not download {what} {url}: {err}") from err
    return bytes(body)


def _too_large(what: str, url: str, how: str) -> str:
    return f"{what} {url} {how}, more than the {SMALL_FILE_MAX_BYTES >> 20} MiB such a file may have; it was not read"


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
