"""Shared fixtures: upstream key manifests, synthetic mmseg checkpoints, a local HTTP file server."""
from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from functools import cache
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@cache
def upstream_manifests() -> dict[str, dict[str, list]]:
    """For each entry, every tensor of the published mmseg checkpoint: {key: [shape, dtype]}.

    Read off the upstream code (``shared/golden``); kept here so the tests run without it.
    """
    with gzip.open(FIXTURES / "mmseg_manifests.json.gz", "rt") as f:
        return json.load(f)


def synthetic_state_dict(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the names, shapes and dtypes of the entry's published checkpoint."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, (shape, dtype) in sorted(upstream_manifests()[name].items()):
        if dtype == "int64":
            out[key] = torch.zeros(shape, dtype=torch.int64)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=g) + 0.5
        else:
            out[key] = 0.05 * torch.randn(shape, generator=g)
    return out


def save_mmseg_checkpoint(path: Path, state_dict: dict[str, torch.Tensor]) -> Path:
    """Save in the mmcv runner container, meta data with NumPy scalars included as published files have."""
    meta = {"mmseg_version": "0.29.1", "iter": 80000, "hook_msgs": {"best_score": np.float64(0.477)}}
    torch.save({"state_dict": state_dict, "meta": meta}, path)
    return path


class FileServer:
    """Serves the files of ``root`` on 127.0.0.1 and records the paths requested."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        self.truncate_at: int | None = None  # send only this many bytes of a body, then close
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                server.requests.append(self.path)
                if server.truncate_at is None:
                    return super().do_GET()
                data = (root / self.path.lstrip("/")).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: server.truncate_at])
                self.wfile.flush()
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

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


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty weights cache and no mirror."""
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("SEGZOO_CACHE", str(cache_dir))
    monkeypatch.delenv("SEGZOO_MIRROR", raising=False)
    return cache_dir


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
