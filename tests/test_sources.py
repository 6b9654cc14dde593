"""Weights that are not plain URLs: share pages a person must open, tar archives, and `segzoo inspect`."""

import dataclasses
import io
import json
import tarfile

import pytest
import safetensors.torch
import torch

import segzoo
from segzoo.cli import main
from segzoo.weights import (
    CheckpointError,
    CheckpointMismatchError,
    WeightsUnavailableError,
    fetch_weights,
    read_state_dict,
)
from segzoo.weights.cache import LOCK_FILE_NAME
from segzoo.weights.fetch import ManualDownloadRequired
from segzoo.zoo import WeightSource
from tests.conftest import save_mmseg_checkpoint, synthetic_state_dict

NAME = "moganet_xt_fpn_ade20k"
KEY = "decode_head.conv_seg.weight"
SHARE_PAGE = "https://pan.example.com/s/1AbCdEf"


def _use_source(monkeypatch, source):
    from segzoo import registry

    info = dataclasses.replace(registry._catalog().by_name[NAME], weights=(source,))
    monkeypatch.setitem(registry._catalog().by_name, NAME, info)


@pytest.fixture
def manual(monkeypatch):
    source = WeightSource(
        url=SHARE_PAGE, format="mmseg", kind="manual", access_code="x2d5", filename="moganet_xt_fpn.pth"
    )
    _use_source(monkeypatch, source)
    return source


def test_share_page_fails_at_once_saying_what_to_do(manual, isolated_cache):
    with pytest.raises(WeightsUnavailableError) as err:
        segzoo.create_model(NAME, pretrained=True, progress=False)
    message = str(err.value)
    for needed in (SHARE_PAGE, "x2d5", str(isolated_cache / "moganet_xt_fpn.pth"), "SEGZOO_MIRROR", "checkpoint_path"):
        assert needed in message


def test_share_page_file_put_in_the_cache_or_a_mirror_loads(manual, isolated_cache, tmp_path, monkeypatch):
    isolated_cache.mkdir()
    save_mmseg_checkpoint(isolated_cache / "moganet_xt_fpn.pth", synthetic_state_dict(NAME))
    model = segzoo.create_model(NAME, pretrained=True, progress=False)
    assert torch.equal(model.state_dict()[KEY], synthetic_state_dict(NAME)[KEY])
    assert json.loads((isolated_cache / LOCK_FILE_NAME).read_text())[SHARE_PAGE]["trust"] == "first-use"
    folder = tmp_path / "mirror"
    folder.mkdir()
    save_mmseg_checkpoint(folder / "moganet_xt_fpn.pth", synthetic_state_dict(NAME))
    monkeypatch.setenv("SEGZOO_CACHE", str(tmp_path / "fresh"))
    monkeypatch.setenv("SEGZOO_MIRROR", str(folder))
    segzoo.create_model(NAME, pretrained=True, progress=False)


def test_share_page_missing_from_a_url_mirror_still_says_what_to_do(manual, file_server, monkeypatch):
    monkeypatch.setenv("SEGZOO_MIRROR", file_server.url)
    with pytest.raises(ManualDownloadRequired) as err:
        fetch_weights(manual, progress=False)
    message = str(err.value)
    for needed in ("404", f"{file_server.url}/moganet_xt_fpn.pth", SHARE_PAGE, "x2d5", "needs a person"):
        assert needed in message


def test_download_lists_share_page_entries_as_manual(manual, tmp_path, capsys, isolated_cache):
    folder = tmp_path / "mirror"
    assert main(["download", NAME, "--to", str(folder), "--quiet"]) == 1  # the mirror lacks a file
    out = capsys.readouterr().out
    assert f"{NAME}: share page, needs a person: open {SHARE_PAGE} in a browser (extraction code x2d5)" in out
    assert json.loads((folder / "manifest.json").read_text()) == {}
    isolated_cache.mkdir(exist_ok=True)
    save_mmseg_checkpoint(isolated_cache / "moganet_xt_fpn.pth", synthetic_state_dict(NAME))
    assert main(["download", NAME, "--to", str(folder), "--quiet"]) == 0  # now in the cache: copied
    assert (folder / "moganet_xt_fpn.pth").is_file() and NAME in json.loads((folder / "manifest.json").read_text())


def _tar(path, members):
    """A tar archive of ``members``: (TarInfo fields, bytes or None) pairs."""
    with tarfile.open(path, "w") as tar:
        for fields, data in members:
            info = tarfile.TarInfo(fields.pop("name"))
            for key, value in fields.items():
                setattr(info, key, value)
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _checkpoint_bytes(state_dict, container="state_dict"):
    buffer = io.BytesIO()
    torch.save({container: state_dict, "epoch": 120}, buffer)
    return buffer.getvalue()


def _glore_style_archive(path, state_dict):
    """Code and weights packed together, as GloRe publishes them; importing the code would leave a mark."""
    code = b"open('/tmp/segzoo-archive-code-ran', 'w').write('imported')\n"
    return _tar(
        path,
        [
            ({"name": "resnet50_w-glore", "type": tarfile.DIRTYPE}, None),
            ({"name": "resnet50_w-glore/network/__init__.py"}, code),
            ({"name": "resnet50_w-glore/train.py"}, code),
            ({"name": "resnet50_w-glore/model/cityscapes_ep-0100.pth"}, _checkpoint_bytes(state_dict)),
            ({"name": "resnet50_w-glore/README.md"}, b"# trained on Cityscapes fine\n"),
        ],
    )


def test_archive_source_is_downloaded_verified_and_its_checkpoint_loaded(file_server, monkeypatch, isolated_cache):
    source = WeightSource(url=f"{file_server.url}/resnet50_w-glore.tar", format="pytorch", kind="archive")
    _use_source(monkeypatch, source)
    _glore_style_archive(file_server.root / "resnet50_w-glore.tar", synthetic_state_dict(NAME))
    for _ in range(2):
        model = segzoo.create_model(NAME, pretrained=True, progress=False)
        assert torch.equal(model.state_dict()[KEY], synthetic_state_dict(NAME)[KEY])
    assert file_server.gets("/resnet50_w-glore.tar") == [None]
    record = json.loads((isolated_cache / LOCK_FILE_NAME).read_text())[source.url]
    assert record["file"] == "resnet50_w-glore.tar" and record["derived"]["file"] == "resnet50_w-glore.safetensors"
    assert not (isolated_cache / "resnet50_w-glore").exists()  # only the checkpoint was read, into a temp file
    assert not __import__("os").path.exists("/tmp/segzoo-archive-code-ran")


def test_archive_as_checkpoint_path(tmp_path):
    path = _glore_style_archive(tmp_path / "weights.tar", synthetic_state_dict(NAME))
    model = segzoo.create_model(NAME, checkpoint_path=path)
    assert torch.equal(model.state_dict()[KEY], synthetic_state_dict(NAME)[KEY])


def test_archive_in_another_layout_lists_both_layouts(tmp_path):
    renamed = {f"module.net.{k}": v for k, v in synthetic_state_dict(NAME).items()}
    path = _glore_style_archive(tmp_path / "weights.tar", renamed)
    with pytest.raises(CheckpointMismatchError) as err:
        segzoo.create_model(NAME, checkpoint_path=path)
    message = str(err.value)
    assert str(path) in message and "the file holds: net.*" in message and "the model expects: backbone.*" in message


HOSTILE = {
    "absolute path": [({"name": "/etc/segzoo-owned"}, b"x")],
    "path with '..'": [({"name": "ok/../../segzoo-owned"}, b"x")],
    "link to": [({"name": "model.pth", "type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, None)],
    "link to ": [({"name": "model.pth", "type": tarfile.LNKTYPE, "linkname": "../outside.pth"}, None)],
    "device, FIFO": [({"name": "dev", "type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}, None)],
    "FIFO or other": [({"name": "pipe", "type": tarfile.FIFOTYPE}, None)],
}


@pytest.mark.parametrize("why", HOSTILE)
def test_hostile_archives_are_refused_before_anything_is_extracted(tmp_path, why, monkeypatch):
    monkeypatch.chdir(tmp_path)
    members = [({"name": "model/weights.pth"}, _checkpoint_bytes(synthetic_state_dict(NAME))), *HOSTILE[why]]
    path = _tar(tmp_path / "hostile.tar", members)
    with pytest.raises(CheckpointError, match=f"not extracted.*{why.strip()}"):
        read_state_dict(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.tar"]


def test_archive_size_and_member_limits(tmp_path, monkeypatch):
    path = _tar(tmp_path / "big.tar", [({"name": f"f{i}.pth"}, b"x" * 100) for i in range(5)])
    monkeypatch.setenv("SEGZOO_ARCHIVE_MAX_MEMBER_BYTES", "50")
    with pytest.raises(CheckpointError, match="over the 50 byte limit"):
        read_state_dict(path)
    monkeypatch.setenv("SEGZOO_ARCHIVE_MAX_MEMBER_BYTES", "1000")
    monkeypatch.setenv("SEGZOO_ARCHIVE_MAX_TOTAL_BYTES", "400")
    with pytest.raises(CheckpointError, match="unpacks to 500 bytes"):
        read_state_dict(path)
    monkeypatch.setenv("SEGZOO_ARCHIVE_MAX_MEMBERS", "3")
    with pytest.raises(CheckpointError, match="more than 3 members"):
        read_state_dict(path)


def test_archive_without_a_checkpoint_says_so(tmp_path):
    path = _tar(tmp_path / "code.tar", [({"name": "train.py"}, b"print('hi')\n")])
    with pytest.raises(CheckpointError, match="holds no checkpoint.*segzoo inspect"):
        read_state_dict(path)


def test_inspect_shows_containers_prefixes_and_a_compact_tree(tmp_path, capsys):
    state_dict = synthetic_state_dict(NAME)
    mmseg = save_mmseg_checkpoint(tmp_path / "mmseg.pth", state_dict)
    assert main(["inspect", str(mmseg)]) == 0
    out = capsys.readouterr().out
    assert "mmcv/mmseg runner checkpoint, weights under 'state_dict'; also: meta (dict)" in out
    assert f"tensors: {len(state_dict)}" in out and "prefixes: backbone.* (" in out
    assert "blocks1.\n" in out and "{0-" in out and "num_batches_tracked () int64" in out  # folded blocks
    detectron2 = tmp_path / "d2.pth"
    torch.save({"model": state_dict, "iteration": 90000}, detectron2)
    assert main(["inspect", str(detectron2)]) == 0
    assert "detectron2 checkpoint, weights under 'model'; also: iteration (int)" in capsys.readouterr().out
    native = tmp_path / "model.safetensors"
    safetensors.torch.save_file(state_dict, native, metadata={"format": "pt"})
    assert main(["inspect", str(native)]) == 0
    out = capsys.readouterr().out
    assert "format: safetensors" in out and f"tensors: {len(state_dict)}" in out


def test_inspect_lists_archive_members_and_flags_hostile_ones(tmp_path, capsys):
    good = _glore_style_archive(tmp_path / "good.tar", synthetic_state_dict(NAME))
    assert main(["inspect", str(good)]) == 0
    out = capsys.readouterr().out
    assert "resnet50_w-glore/network/__init__.py" in out and "checkpoint: resnet50_w-glore/model/" in out
    assert "weights under 'state_dict'; also: epoch (int)" in out
    bad = _tar(tmp_path / "bad.tar", [({"name": "../../escape.pth"}, b"x")])
    assert main(["inspect", str(bad)]) == 0
    out = capsys.readouterr().out
    assert "REFUSED: path with '..'" in out and "not extracted" in out


class _RunsCode:
    def __reduce__(self):
        return (print, ("code from the checkpoint ran",))


def test_inspect_never_unpickles_code(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "meta": _RunsCode()}, path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "not readable safely" in out and "code from the checkpoint ran" not in out


# --- the published sources of the EMANet and GloRe entries, end to end ------------------------------------------


def test_emanet_share_page_file_put_in_the_cache_loads_through_the_converter(isolated_cache):

    name = "emanet_r50_cityscapes"
    source = segzoo.model_info(name).weights[0]
    with pytest.raises(WeightsUnavailableError, match=source.access_code):
        segzoo.create_model(name, pretrained=True, progress=False)
    isolated_cache.mkdir(exist_ok=True)
    state_dict = synthetic_state_dict(name)
    torch.save({"model": state_dict, "iteration": 29_999}, isolated_cache / source.filename)  # detectron2's layout
    model = segzoo.create_model(name, pretrained=True, progress=False)
    assert torch.equal(model.state_dict()["decode_head.conv_seg.weight"], state_dict["sem_seg_head.predictor.2.weight"])
    assert torch.equal(model.state_dict()["decode_head.emau.mu"], state_dict["sem_seg_head.emau.mu"])
    segzoo.create_model(name, pretrained=True, progress=False)  # later loads: the verified safetensors copy


def test_glore_archive_downloads_and_loads(file_server, monkeypatch, isolated_cache):

    name = "glore_r50_fcn_cityscapes"
    source = segzoo.model_info(name).weights[0]
    state_dict = synthetic_state_dict(name)
    _glore_style_archive(file_server.root / source.filename, state_dict)
    monkeypatch.setenv("SEGZOO_MIRROR", file_server.url)
    model = segzoo.create_model(name, pretrained=True, progress=False)
    assert torch.equal(
        model.state_dict()["decode_head.glore.conv_proj.weight"], state_dict["decode_head.glore.conv_proj.weight"]
    )
    assert file_server.gets(f"/{source.filename}") == [None]
