"""Shared fixtures: upstream key manifests, synthetic mmseg checkpoints, a local HTTP file server."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# The smallest entry of each architecture, and RegionProxy's smallest hybrid ResNet + ViT.
ONE_PER_ARCHITECTURE = [
    "emanet_r50_coco",
    "eurnet_t_upernet_ade20k",
    "glore_r50_fcn_cityscapes",
    "moganet_xt_fpn_ade20k",
    "moganet_xt_upernet_ade20k",
    "regproxy_r26_vit_s32_ade20k",
    "regproxy_vit_ti16_ade20k",
]


@cache
def upstream_manifests() -> dict[str, dict[str, list]]:
    """For each entry, every tensor of the published checkpoint: {key: [shape, dtype]}.

    Read off the upstream code (the golden cases); kept in ``tests/fixtures/*_manifests.json.gz``
    so the tests run without them.
    """
    manifests = {}
    for path in sorted(FIXTURES.glob("*_manifests.json.gz")):
        with gzip.open(path, "rt") as f:
            manifests.update(json.load(f))
    return manifests


def synthetic_state_dict(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the names, shapes and dtypes of the entry's published checkpoint.

    EM bases (EMANet's ``mu``) get unit-norm columns, as trained ones have.
    """
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, (shape, dtype) in sorted(upstream_manifests()[name].items()):
        if dtype == "int64":
            out[key] = torch.zeros(shape, dtype=torch.int64)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith(".mu"):
            mu = torch.randn(shape, generator=g)
            out[key] = mu / mu.norm(dim=1, keepdim=True)
        else:
            out[key] = 0.05 * torch.randn(shape, generator=g)
    return out


def save_mmseg_checkpoint(path: Path, state_dict: dict[str, torch.Tensor]) -> Path:
    """Save in the mmcv runner container, meta data with NumPy scalars included as published files have."""
    meta = {"mmseg_version": "0.29.1", "iter": 80000, "hook_msgs": {"best_score": np.float64(0.477)}}
    torch.save({"state_dict": state_dict, "meta": meta}, path)
    return path


class FileServer:
    """Serves the files of ``root`` on 127.0.0.1 like a release host: ETag, Range and If-Range.

    Knobs for fault tests: ``truncate`` (close the connection after half of the
    next N bodies), ``fail`` (answer the next requests with these statuses),
    ``corrupt`` (serve altered bytes), ``chunk_delay_s`` (slow bodies down),
    ``trickle_s`` (send bodies one byte at a time, this far apart).
    ``requests`` records (path, Range header) of every GET.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, str | None]] = []
        self.truncate = 0
        self.fail: list[int] = []
        self.corrupt = False
        self.chunk_delay_s = 0.0
        self.trickle_s = 0.0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                self.path = urlsplit(self.path).path  # as a proxy, the server sees absolute URLs
                with server.lock:
                    server.requests.append((self.path, self.headers.get("Range")))
                    status = server.fail.pop(0) if server.fail else None
                    truncate = server.truncate > 0
                    server.truncate -= truncate
                if status:
                    self.send_error(status)
                    return
                path = root / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                etag = f'"{hashlib.sha256(data).hexdigest()[:16]}"'
                if server.corrupt:
                    data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
                start = 0
                ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
                if ranged and self.headers.get("If-Range") in (None, etag):
                    start = int(ranged.group(1))
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", etag)
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if truncate:
                    body = body[: len(body) // 2]
                step = 1 if server.trickle_s else 65536
                for i in range(0, len(body), step):
                    try:
                        self.wfile.write(body[i : i + step])
                        self.wfile.flush()
                    except OSError:  # the client gave up
                        return
                    time.sleep(server.trickle_s or server.chunk_delay_s)
                if truncate:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def gets(self, path: str) -> list[str | None]:
        """The Range headers of the GETs of ``path`` so far."""
        return [rng for p, rng in self.requests if p == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "served"
    root.mkdir()
    server = FileServer(root)
    yield server
    server.close()


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Path]]:
    """``tmp_path_factory.mktemp`` for module-scoped fixtures; what it made is removed when the module is done.

    The suite writes gigabytes of synthetic checkpoints; kept to the end of the session they can fill a CI disk.
    """
    made: list[Path] = []

    def mktemp(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty weights and Hugging Face caches, online, no mirror, quick retries."""
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("SEGZOO_CACHE", str(cache_dir))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    for var in ("SEGZOO_MIRROR", "SEGZOO_OFFLINE", "HF_HUB_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # the local test servers, even behind a proxy
    monkeypatch.setattr("segzoo.weights.download.BACKOFF_S", 0.01)
    return cache_dir


@pytest.fixture
def silent_server_url() -> Iterator[str]:
    """A URL on 127.0.0.1 whose server accepts connections and never answers."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)  # the kernel completes the handshakes; nobody ever reads or writes
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


_GPU_TESTS_NOT_RUN: list[pytest.Item] = []


def pytest_deselected(items: list[pytest.Item]) -> None:
    _GPU_TESTS_NOT_RUN.extend(item for item in items if item.get_closest_marker("gpu"))


def pytest_terminal_summary(terminalreporter) -> None:
    """Say how many CUDA tests the default selection left out, and how to run them: never silently."""
    if _GPU_TESTS_NOT_RUN:
        here = "this machine has one" if torch.cuda.is_available() else "this machine has none"
        terminalreporter.write_line(
            f"gpu tests not selected: {len(_GPU_TESTS_NOT_RUN)} (CUDA paths); run "
            f"`python -m pytest -m gpu` on a machine with a CUDA device ({here})"
        )
