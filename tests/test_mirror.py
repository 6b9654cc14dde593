"""Air-gapped use: offline mode, mirror folders, `segzoo download`, and `segzoo pin`."""

import dataclasses
import hashlib
import json

import pytest
import torch

import segzoo
from segzoo.cli import main
from segzoo.weights import ChecksumMismatchError, WeightsUnavailableError
from segzoo.zoo import WeightSource
from segzoo.zoo.pins import apply_pins, read_pins
from tests.conftest import save_mmseg_checkpoint, synthetic_state_dict

NAME = "moganet_xt_fpn_ade20k"


@pytest.fixture
def upstream(file_server, monkeypatch):
    """The entry's checkpoint served by a local stand-in for the release host (as a URL mirror)."""
    source = segzoo.model_info(NAME).weights[0]
    path = save_mmseg_checkpoint(file_server.root / source.filename, synthetic_state_dict(NAME))
    monkeypatch.setenv("SEGZOO_MIRROR", file_server.url)
    return path


@pytest.mark.parametrize("flag", ["SEGZOO_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_uses_the_cache_and_never_the_network(upstream, file_server, monkeypatch, flag, isolated_cache):
    segzoo.create_model(NAME, pretrained=True, progress=False)
    online_requests = len(file_server.requests)  # the file, and the mirror's manifest if it has one
    monkeypatch.setenv(flag, "1")
    segzoo.create_model(NAME, pretrained=True, progress=False)
    assert len(file_server.requests) == online_requests
    (isolated_cache / upstream.name).unlink()
    with pytest.raises(WeightsUnavailableError) as err:
        segzoo.create_model(NAME, pretrained=True, progress=False)
    message = str(err.value)
    assert "offline" in message and str(isolated_cache / upstream.name) in message and "SEGZOO_MIRROR" in message
    assert len(file_server.requests) == online_requests


def test_download_fills_a_mirror_folder_that_works_offline(upstream, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "mirror"
    assert main(["download", NAME, "--to", str(folder), "--quiet"]) == 0
    manifest = json.loads((folder / "manifest.json").read_text())
    source = segzoo.model_info(NAME).weights[0]
    assert manifest[NAME] == {
        "file": source.filename,
        "url": source.url,
        "sha256": hashlib.sha256(upstream.read_bytes()).hexdigest(),
        "size": upstream.stat().st_size,
    }
    # A fresh machine: empty cache, no network, the folder as mirror.
    monkeypatch.setenv("SEGZOO_CACHE", str(tmp_path / "fresh_cache"))
    monkeypatch.setenv("SEGZOO_OFFLINE", "1")
    monkeypatch.setenv("SEGZOO_MIRROR", str(folder))
    model = segzoo.create_model(NAME, pretrained=True, progress=False)
    assert torch.equal(
        model.state_dict()["neck.fpn_convs.0.conv.weight"], synthetic_state_dict(NAME)["neck.fpn_convs.0.conv.weight"]
    )


def test_mirror_copies_are_checked_against_recorded_hashes(upstream, tmp_path, monkeypatch, isolated_cache):
    segzoo.create_model(NAME, pretrained=True, progress=False)  # records the hash on first use
    folder = tmp_path / "mirror"
    folder.mkdir()
    save_mmseg_checkpoint(folder / upstream.name, synthetic_state_dict(NAME, seed=3))  # a different file
    (isolated_cache / upstream.name).unlink()
    monkeypatch.setenv("SEGZOO_MIRROR", str(folder))
    with pytest.raises(ChecksumMismatchError, match="expected"):
        segzoo.create_model(NAME, pretrained=True, progress=False)
    assert not (isolated_cache / upstream.name).exists()


def test_missing_file_in_mirror_folder_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGZOO_MIRROR", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match=str(tmp_path)):
        segzoo.create_model(NAME, pretrained=True, progress=False)


def test_pin_records_sha256_and_size_in_the_registry_data(upstream, tmp_path, capsys):
    pins_file = tmp_path / "pins.json"
    assert main(["pin", NAME, "--pins-file", str(pins_file), "--quiet"]) == 0
    sha256 = hashlib.sha256(upstream.read_bytes()).hexdigest()
    assert f"{NAME}: sha256 {sha256}" in capsys.readouterr().out
    source = segzoo.model_info(NAME).weights[0]
    assert read_pins(pins_file) == {source.url: {"sha256": sha256, "size": upstream.stat().st_size}}
    (pinned,) = apply_pins([segzoo.model_info(NAME)], read_pins(pins_file))
    assert pinned.weights[0].sha256 == sha256 and pinned.weights[0].size == upstream.stat().st_size


def test_pin_refuses_a_file_that_does_not_load(file_server, tmp_path, monkeypatch, capsys):
    source = segzoo.model_info(NAME).weights[0]
    save_mmseg_checkpoint(file_server.root / source.filename, synthetic_state_dict("moganet_t_fpn_ade20k"))
    monkeypatch.setenv("SEGZOO_MIRROR", file_server.url)
    pins_file = tmp_path / "pins.json"
    assert main(["pin", NAME, "--pins-file", str(pins_file), "--quiet"]) == 1
    out, err = capsys.readouterr()
    assert f"{NAME}: failed:" in out and "does not match" in out and not pins_file.exists()
    assert (
        err
        == f"segzoo: error: 1 of 1 files are not pinned in {pins_file}: 0 need a person, 1 failed (each listed above)\n"
    )


def test_pin_writes_the_source_trees_pins_only_from_a_checkout(upstream, tmp_path, monkeypatch, capsys):
    from segzoo.zoo import pins

    assert pins.checkout_pins_file() == pins.PINS_FILE  # the tests run from a checkout
    installed = tmp_path / "site-packages" / "segzoo" / "zoo" / "pins.json"
    monkeypatch.setattr(pins, "PINS_FILE", installed)
    assert pins.checkout_pins_file() is None
    assert main(["pin", NAME, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("segzoo: error: segzoo runs from an installed copy") and "--pins-file" in err
    assert len(err.splitlines()) == 1 and not installed.exists()
    assert upstream.parent.joinpath("manifest.json").exists() is False  # nothing was downloaded for it


SHARE_PAGE = "https://pan.example.com/s/1AbCdEf"
SERVED, MISSING, SHARED = "moganet_xt_fpn_ade20k", "moganet_t_fpn_ade20k", "moganet_s_fpn_ade20k"


@pytest.fixture
def zoo_with_a_share_page(monkeypatch):
    """SHARED's weights on a share page with an access code, as EMANet's are."""
    from segzoo import registry

    source = WeightSource(url=SHARE_PAGE, format="mmseg", kind="manual", access_code="x2d5", filename="shared.pth")
    info = dataclasses.replace(registry._catalog().by_name[SHARED], weights=(source,))
    monkeypatch.setitem(registry._catalog().by_name, SHARED, info)
    return source


def test_download_tries_every_entry_and_reports_each_one_it_could_not_get(
    zoo_with_a_share_page, file_server, tmp_path, monkeypatch, capsys, isolated_cache
):
    served = segzoo.model_info(SERVED).weights[0]
    save_mmseg_checkpoint(file_server.root / served.filename, synthetic_state_dict(SERVED))
    monkeypatch.setenv("SEGZOO_MIRROR", file_server.url)  # a URL mirror lacking MISSING's file and the share page's
    folder = tmp_path / "mirror"
    assert main(["download", SHARED, MISSING, SERVED, "--to", str(folder), "--quiet"]) == 1
    out, err = capsys.readouterr()
    missing = segzoo.model_info(MISSING).weights[0].filename
    assert f"{MISSING}: failed: could not download {file_server.url}/{missing}" in out and "404" in out
    shared = next(line for line in out.splitlines() if line.startswith(f"{SHARED}:"))
    for needed in ("needs a person", SHARE_PAGE, "(extraction code x2d5)", "shared.pth", str(isolated_cache)):
        assert needed in shared
    assert err == f"segzoo: error: 2 of 3 files are not in {folder}: 1 need a person, 1 failed (each listed above)\n"
    assert list(json.loads((folder / "manifest.json").read_text())) == [SERVED]
    assert (folder / served.filename).is_file()
    # The person saves the share page's file in the cache; the next run copies it too.
    save_mmseg_checkpoint(isolated_cache / "shared.pth", synthetic_state_dict(SHARED))
    save_mmseg_checkpoint(file_server.root / missing, synthetic_state_dict(MISSING))
    assert main(["download", SHARED, MISSING, SERVED, "--to", str(folder), "--quiet"]) == 0
    assert sorted(json.loads((folder / "manifest.json").read_text())) == sorted([SERVED, MISSING, SHARED])


def test_download_offline_goes_through_every_entry(zoo_with_a_share_page, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEGZOO_OFFLINE", "1")
    assert main(["download", SERVED, SHARED, MISSING, "--to", str(tmp_path / "mirror"), "--quiet"]) == 1
    out, err = capsys.readouterr()
    assert [line.split(":")[0] for line in out.splitlines()[1:]] == [SERVED, SHARED, MISSING]
    assert out.count("failed: segzoo is offline") == 2 and SHARE_PAGE in out and "x2d5" in out
    assert "3 of 3 files" in err and "Traceback" not in err


def test_registry_pins_file_is_well_formed():
    for url, pin in read_pins().items():
        assert url.startswith("https://") and len(pin["sha256"]) == 64 and pin["size"] > 0


def test_commands_need_names_or_all():
    with pytest.raises(SystemExit):
        main(["download", "--to", "x"])
