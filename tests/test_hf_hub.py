"""segzoo's native layout and the Hugging Face hub, with the real huggingface_hub client against a local hub."""

import dataclasses
import json
import socket
import threading
import time

import pytest
import safetensors.torch
import torch
from huggingface_hub import ModelCard

import segzoo
from segzoo.cli import main
from segzoo.hub import push_to_hub, save_pretrained
from segzoo.weights import WeightsUnavailableError
from segzoo.zoo import ModelInfo, WeightSource
from segzoo.zoo.records import from_plain, to_plain
from tests.conftest import save_mmseg_checkpoint, synthetic_state_dict
from tests.fake_hub import FakeHub
from tests.test_download import TRICKLED_HEADERS, socket_server, trickling_server

NAME = "moganet_xt_fpn_ade20k"


@pytest.fixture
def hub(monkeypatch):
    fake = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    yield fake
    fake.close()


@pytest.fixture
def model():
    m = segzoo.create_model(NAME)
    m.load_state_dict(synthetic_state_dict(NAME))
    return m


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_save_pretrained_writes_the_native_layout(model, tmp_path):
    folder = save_pretrained(model, tmp_path / "out", repo_id="org/xt")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["library"] == "segzoo" and config["info"]["architecture"] == "moganet_fpn"
    assert config["info"]["arch_args"] == {"arch": "xt", "drop_path_rate": 0.05}
    assert safetensors.torch.load_file(folder / "model.safetensors").keys() == model.state_dict().keys()
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "segzoo" and card.data.license == "apache-2.0"
    assert card.data.datasets == ["scene_parse_150"] and "semantic-segmentation" in card.data.tags
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert results == {"mIoU": 40.3, "mAcc": 52.4}
    assert 'create_model("hf-hub:org/xt"' in card.text


@pytest.mark.parametrize("name", ["emanet_r50_coco", "eurnet_t_upernet_ade20k", "glore_r50_fcn_cityscapes"])
def test_config_json_of_earlier_versions_still_loads(name):
    """Sources once had ``file_name`` (now ``filename``); the numbers were ``metrics``, label -> value."""
    info = segzoo.model_info(name)
    plain = to_plain(info)
    for source in plain["weights"]:
        source["file_name"] = source.pop("filename")
    plain["metrics"] = dict(info.metrics)
    del plain["reported_metrics"]
    assert from_plain(ModelInfo, plain) == info


def test_config_json_still_shows_the_numbers_under_the_papers_labels():
    """``metrics`` (label -> value), the key earlier config.json files and ``segzoo info`` had, is written beside
    ``reported_metrics`` and ignored when read back."""
    info = segzoo.model_info("moganet_s_fpn_ade20k")
    plain = to_plain(info)
    assert plain["metrics"] == {"mIoU": 47.7, "mAcc": 59.8} and len(plain["reported_metrics"]) == 2
    assert from_plain(ModelInfo, plain) == info


def test_push_to_hub_then_create_model_from_it(model, hub):
    url = push_to_hub(model, "org/xt", token="hf_test")
    assert url.startswith(hub.url)
    assert sorted(hub.files("org/xt")) == ["README.md", "config.json", "model.safetensors"]
    assert hub.cards and hub.cards[0]["model-index"][0]["name"] == NAME
    loaded = segzoo.create_model("hf-hub:org/xt")
    assert _same_weights(loaded, model) and loaded.info == model.info and not loaded.training


def test_revision_pinning(model, hub):
    push_to_hub(model, "org/xt", token="hf_test")
    first = hub.repos["org/xt"]["commits"][0][0]
    other = segzoo.create_model(NAME)
    other.load_state_dict(synthetic_state_dict(NAME, seed=5))
    push_to_hub(other, "org/xt", token="hf_test")
    assert _same_weights(segzoo.create_model(f"hf-hub:org/xt@{first}"), model)
    assert _same_weights(segzoo.create_model("hf-hub:org/xt"), other)


def test_hub_offline_flag_uses_the_hf_cache_only(model, hub, monkeypatch):
    push_to_hub(model, "org/xt", token="hf_test")
    segzoo.create_model("hf-hub:org/xt")
    requests_before = len(hub.log)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _same_weights(segzoo.create_model("hf-hub:org/xt"), model)
    assert len(hub.log) == requests_before
    with pytest.raises(WeightsUnavailableError, match="offline") as err:
        segzoo.create_model("hf-hub:org/never-downloaded")
    assert "HF_HUB_OFFLINE" in str(err.value) and "SEGZOO_OFFLINE" in str(err.value)
    assert "local_files_only" not in str(err.value) and "local_only" not in str(err.value)


def test_unknown_hub_repo_is_a_clear_error(hub):
    with pytest.raises(WeightsUnavailableError, match="org/missing"):
        segzoo.create_model("hf-hub:org/missing")
    with pytest.raises(ValueError, match="ORG/REPO"):
        segzoo.create_model("hf-hub:not-a-repo-id")


def test_derived_model_keeps_its_pipeline_but_not_the_metrics(hub):
    derived = segzoo.create_model(NAME, num_classes=19)
    push_to_hub(derived, "org/xt19", token="hf_test")
    loaded = segzoo.create_model("hf-hub:org/xt19")
    assert loaded.num_classes == 19 and loaded.info.num_classes == 19 and not loaded.info.metrics
    assert loaded.info.test_pipeline == derived.info.test_pipeline and _same_weights(loaded, derived)
    assert "model-index" not in hub.cards[-1]


def test_hf_hub_source_is_tried_before_the_upstream_url(model, hub, file_server, monkeypatch, caplog):
    from segzoo import registry

    push_to_hub(model, "org/xt", token="hf_test")
    upstream = WeightSource(url=f"{file_server.url}/never-needed.pth", format="mmseg")
    info = dataclasses.replace(
        registry._catalog().by_name[NAME], weights=(WeightSource(url="hf-hub:org/xt", format="safetensors"), upstream)
    )
    monkeypatch.setitem(registry._catalog().by_name, NAME, info)
    with caplog.at_level("INFO", logger="segzoo"):
        assert _same_weights(segzoo.create_model(NAME, pretrained=True), model)
    assert "loaded weights from hf-hub:org/xt" in caplog.text and file_server.requests == []


def test_convert_command_writes_the_hub_layout(tmp_path, capsys):
    ckpt = save_mmseg_checkpoint(tmp_path / "fpn.pth", synthetic_state_dict(NAME))
    out = tmp_path / "converted"
    assert main(["convert", "moganet_xt_fpn", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    original = segzoo.create_model(NAME, checkpoint_path=ckpt)
    assert _same_weights(segzoo.create_model(NAME, checkpoint_path=out / "model.safetensors"), original)
    assert json.loads((out / "config.json").read_text())["info"]["name"] == NAME


# What a hub answers for a file (its commit, etag and size), before a body that here comes a byte at a time
HUB_FILE_HEADERS = (
    b"HTTP/1.1 200 OK\r\nX-Repo-Commit: " + b"0" * 40 + b'\r\nETag: "e"\r\nContent-Length: 100000\r\n\r\n'
)


def hub_trickling_files():
    """A hub on 127.0.0.1 that answers a HEAD with a file's headers at once, and a GET with the same headers and
    then a body of one byte per 20 ms, never finishing; each connection serves one request."""

    def serve(conn: socket.socket, stop: threading.Event) -> None:
        with conn:
            try:
                method = conn.recv(65536).split(b" ", 1)[0]
                conn.sendall(HUB_FILE_HEADERS.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
                while method == b"GET" and not stop.wait(0.02):
                    conn.sendall(b"x")
            except OSError:  # the client gave up
                return

    return socket_server(serve)


@pytest.mark.parametrize(
    "server, variable",
    [
        (lambda: trickling_server(*TRICKLED_HEADERS), "SEGZOO_DOWNLOAD_RESPONSE_DEADLINE"),
        (hub_trickling_files, "SEGZOO_DOWNLOAD_DEADLINE"),
    ],
    ids=["headers", "endless-body"],
)
def test_a_trickling_hub_hits_the_download_deadlines(monkeypatch, tmp_path, server, variable):
    """The hub's client is under segzoo's deadlines too: headers sent a byte at a time, or a body that never ends,
    stop at the limit with a message naming the variable that raises it."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("SEGZOO_DOWNLOAD_RESPONSE_DEADLINE", "1" if variable.endswith("RESPONSE_DEADLINE") else "10")
    monkeypatch.setenv("SEGZOO_DOWNLOAD_DEADLINE", "2")
    with server() as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        start = time.monotonic()
        with pytest.raises(WeightsUnavailableError, match=variable):
            segzoo.create_model("hf-hub:org/trickle")
    assert time.monotonic() - start < 30
