"""Files of segzoo-native Hugging Face repositories, through ``huggingface_hub`` (its cache, offline flag, revisions).

A repository holds ``config.json`` (the entry's info: architecture, arguments,
pipeline, metrics) and ``model.safetensors`` (the state dict in segzoo's layout).
Its downloads end by the same wall-clock deadlines as segzoo's own (see
:class:`segzoo.weights.download.DownloadLimits`): each request of the hub's
client gets ``SEGZOO_DOWNLOAD_RESPONSE_DEADLINE`` for its status line and
headers, then ``SEGZOO_DOWNLOAD_DEADLINE`` for its body; past it the client's
open sockets are shut down (:mod:`segzoo.weights.http`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import segzoo.weights.http as http
from segzoo.weights.download import DownloadLimits
from segzoo.weights.errors import WeightsUnavailableError
from segzoo.zoo.records import HF_HUB_PREFIX

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``hf-hub:ORG/REPO@REV`` -> (``ORG/REPO``, ``REV`` or ``None``)."""
    repo = spec.removeprefix(HF_HUB_PREFIX)
    repo_id, _, revision = repo.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"expected hf-hub:ORG/REPO[@REVISION], got {spec!r}")
    return repo_id, revision or None


def endpoint() -> str | None:
    """The hub endpoint, read at call time so that ``HF_ENDPOINT`` can change within a process."""
    return os.environ.get("HF_ENDPOINT") or None


_limits: ContextVar[DownloadLimits | None] = ContextVar("segzoo_hf_hub_limits", default=None)


def _restart_deadline(deadline: Callable[[DownloadLimits], tuple[float, str]]) -> None:
    """Inside :func:`download_file`, move its deadline to ``deadline(limits)``: seconds from now, and the message."""
    watchdog, limits = http.current_watchdog(), _limits.get()
    if watchdog is not None and limits is not None:
        watchdog.restart(*deadline(limits))


def _on_request(request: Any) -> None:
    """The hub client's request hook: a new request gets the response deadline for its status line and headers."""
    _restart_deadline(
        lambda limits: (
            limits.response_deadline_s,
            f"{request.url} did not answer within {limits.response_deadline_s:g}s: the status line and headers took "
            f"longer (SEGZOO_DOWNLOAD_RESPONSE_DEADLINE raises the limit)",
        )
    )


def _on_response(response: Any) -> None:
    """The hub client's response hook: once the headers are in, the body gets the whole-attempt deadline."""
    _restart_deadline(
        lambda limits: (
            limits.deadline_s,
            f"{response.request.url} took more than {limits.deadline_s:g}s to download (SEGZOO_DOWNLOAD_DEADLINE "
            f"raises the limit)",
        )
    )


def _client_sockets(client: Any) -> Iterator[socket.socket]:
    """The sockets of ``client``'s open connections: httpcore's pool, whose streams name their socket."""
    pool = getattr(getattr(client, "_transport", None), "_pool", None)
    for connection in getattr(pool, "connections", ()):
        stream = getattr(getattr(connection, "_connection", None), "_network_stream", None)
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            yield sock


def _watched_client() -> Any:
    """huggingface_hub's shared client, with segzoo's deadline hooks added once (they act only inside
    :func:`download_file`)."""
    from huggingface_hub import get_session  # noqa: PLC0415 (huggingface_hub loads only for hf-hub: sources)

    client = get_session()
    if _on_request not in client.event_hooks["request"]:
        client.event_hooks = {
            "request": [*client.event_hooks["request"], _on_request],
            "response": [*client.event_hooks["response"], _on_response],
        }
    return client


def download_file(spec: str, filename: str, local_only: bool = False) -> Path:
    """Path of ``filename`` of the repository ``spec`` in the Hugging Face cache, downloading it if needed."""
    from huggingface_hub import hf_hub_download  # noqa: PLC0415 (huggingface_hub loads only for hf-hub: sources)
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError  # noqa: PLC0415

    repo_id, revision = parse_spec(spec)
    limits = DownloadLimits.from_env()
    client = _watched_client()
    token = _limits.set(limits)
    try:
        with http.deadline(limits.response_deadline_s, f"{filename} of {spec}: no answer") as watchdog:
            watchdog.watch_sockets(lambda: list(_client_sockets(client)))
            return Path(
                hf_hub_download(
                    repo_id,
                    filename,
                    revision=revision,
                    endpoint=endpoint(),
                    local_files_only=local_only,
                    library_name="segzoo",
                )
            )
    except LocalEntryNotFoundError as err:
        if not local_only:
            raise WeightsUnavailableError(f"{filename} of {spec} could not be downloaded: {err}") from err
        from huggingface_hub import constants  # noqa: PLC0415

        raise WeightsUnavailableError(
            f"segzoo is offline (SEGZOO_OFFLINE / HF_HUB_OFFLINE) and {filename} of {spec} is not in the Hugging "
            f"Face cache ({constants.HF_HUB_CACHE}); unset those variables to download it once"
        ) from err
    except (HfHubHTTPError, OSError) as err:
        raise WeightsUnavailableError(f"{filename} of {spec} could not be downloaded: {err}") from err
    finally:
        _limits.reset(token)
