"""Downloading weights: cache, verification, failures, and create_model(pretrained=True)."""
import hashlib
import time

import pytest
import torch

import segzoo
from segzoo.weights import ChecksumMismatchError, WeightsDownloadError, fetch_weights
from segzoo.zoo import WeightSource
from tests.conftest import closed_port_url, save_mmseg_checkpoint, synthetic_state_dict

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


@pytest.fixture
def served(file_server):
    (file_server.root / "weights.pth").write_bytes(PAYLOAD)
    return file_server


def _source(server, sha256=hashlib.sha256(PAYLOAD).hexdigest()):
    return WeightSource(url=f"{server.url}/weights.pth", format="mmseg", sha256=sha256)


def test_first_download_then_cache_hit_without_network(served, isolated_cache):
    path = fetch_weights(_source(served), progress=False)
    assert path == isolated_cache / "weights.pth" and path.read_bytes() == PAYLOAD
    served.close()
    assert fetch_weights(_source(served), progress=False) == path
    assert served.requests == ["/weights.pth"]
    assert [p.name for p in isolated_cache.iterdir()] == ["weights.pth"]


def test_sha256_mismatch_leaves_nothing_cached(served, isolated_cache):
    wrong = "0" * 64
    with pytest.raises(ChecksumMismatchError) as err:
        fetch_weights(_source(served, sha256=wrong), progress=False)
    message = str(err.value)
    assert wrong in message and hashlib.sha256(PAYLOAD).hexdigest() in message and "weights.pth" in message
    assert list(isolated_cache.iterdir()) == []


def test_unknown_sha256_still_downloads(served, isolated_cache):
    assert fetch_weights(_source(served, sha256=None), progress=False).read_bytes() == PAYLOAD


def test_connection_dropped_midway_leaves_nothing(served, isolated_cache):
    served.truncate_at = len(PAYLOAD) // 2
    with pytest.raises(WeightsDownloadError):
        fetch_weights(_source(served, sha256=None), progress=False)
    assert list(isolated_cache.iterdir()) == []


def test_unreachable_host_says_how_to_load_offline(isolated_cache):
    source = WeightSource(url=f"{closed_port_url()}/weights.pth", format="mmseg")
    start = time.monotonic()
    with pytest.raises(WeightsDownloadError) as err:
        fetch_weights(source, progress=False)
    assert time.monotonic() - start < 30
    message = str(err.value)
    assert "checkpoint_path" in message and str(isolated_cache / "weights.pth") in message
    assert list(isolated_cache.iterdir()) == []


def test_http_error_is_reported(served, isolated_cache):
    source = WeightSource(url=f"{served.url}/absent.pth", format="mmseg")
    with pytest.raises(WeightsDownloadError, match="404"):
        fetch_weights(source, progress=False)


def test_pretrained_downloads_once_from_mirror(file_server, monkeypatch):
    name = "moganet_xt_fpn_ade20k"
    filename = segzoo.model_info(name).weights[0].filename
    state_dict = synthetic_state_dict(name)
    save_mmseg_checkpoint(file_server.root / filename, state_dict)
    monkeypatch.setenv("SEGZOO_MIRROR", file_server.url)
    for _ in range(2):
        model = segzoo.create_model(name, pretrained=True)
        assert torch.equal(model.state_dict()["decode_head.conv_seg.weight"], state_dict["decode_head.conv_seg.weight"])
    assert file_server.requests == [f"/{filename}"]
