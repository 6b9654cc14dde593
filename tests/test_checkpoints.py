"""Reading checkpoints: original mmseg files and segzoo safetensors, strictly, without unsafe unpickling."""

import json
import os
import pickle
import shutil
import tarfile
import warnings
import zipfile

import pytest
import safetensors.torch
import torch

import segzoo
from segzoo.cli import main
from segzoo.weights import CheckpointError, CheckpointMismatchError, read_state_dict
from segzoo.weights.checkpoint import load_checkpoint_object, sniff_format
from segzoo.weights.inspect import describe_file
from tests.conftest import save_mmseg_checkpoint, synthetic_state_dict

KEY = "decode_head.conv_seg.weight"


def _assert_loaded(model, state_dict):
    for key, value in model.state_dict().items():
        assert torch.equal(value, state_dict[key]), key


@pytest.mark.parametrize("name", segzoo.list_models("moganet_*"))  # the other families' own tests load theirs
def test_original_checkpoint_loads_strictly(tmp_path, name):
    state_dict = synthetic_state_dict(name)
    path = save_mmseg_checkpoint(tmp_path / f"{name}.pth", state_dict)
    model = segzoo.create_model(name, checkpoint_path=path)
    assert not model.training and model.info.name == name
    _assert_loaded(model, state_dict)


def test_module_prefix_is_stripped(tmp_path):
    name = "moganet_xt_fpn_ade20k"
    state_dict = synthetic_state_dict(name)
    path = save_mmseg_checkpoint(tmp_path / "ddp.pth", {f"module.{k}": v for k, v in state_dict.items()})
    _assert_loaded(segzoo.create_model(name, checkpoint_path=path), state_dict)


def test_bare_state_dict_and_safetensors_load(tmp_path):
    name = "moganet_xt_upernet_ade20k"
    state_dict = synthetic_state_dict(name)
    torch.save(state_dict, tmp_path / "bare.pth")
    _assert_loaded(segzoo.create_model(name, checkpoint_path=tmp_path / "bare.pth"), state_dict)
    model = segzoo.create_model(name, checkpoint_path=tmp_path / "bare.pth")
    safetensors.torch.save_file(model.state_dict(), tmp_path / "model.safetensors")
    _assert_loaded(segzoo.create_model(name, checkpoint_path=tmp_path / "model.safetensors"), state_dict)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda sd: sd.pop("decode_head.conv_seg.bias"), "1 missing: decode_head.conv_seg.bias"),
        (lambda sd: sd.__setitem__("decode_head.extra.weight", torch.zeros(1)), "1 unexpected: decode_head.extra"),
        (lambda sd: sd.__setitem__("neck.fpn_convs.0.conv.bias", torch.zeros(7)), "1 wrong shape: neck.fpn_convs.0"),
    ],
)
def test_mismatch_names_file_and_keys(tmp_path, edit, message):
    state_dict = synthetic_state_dict("moganet_xt_fpn_ade20k")
    edit(state_dict)
    path = save_mmseg_checkpoint(tmp_path / "broken.pth", state_dict)
    with pytest.raises(CheckpointMismatchError) as err:
        segzoo.create_model("moganet_xt_fpn_ade20k", checkpoint_path=path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_checkpoint_of_another_model_is_rejected(tmp_path):
    path = save_mmseg_checkpoint(tmp_path / "t.pth", synthetic_state_dict("moganet_t_fpn_ade20k"))
    with pytest.raises(CheckpointMismatchError, match="wrong shape"):
        segzoo.create_model("moganet_xt_fpn_ade20k", checkpoint_path=path)


def test_new_num_classes_reinitializes_only_classifiers(tmp_path):
    name = "moganet_xt_upernet_ade20k"
    state_dict = synthetic_state_dict(name)
    path = save_mmseg_checkpoint(tmp_path / "ckpt.pth", state_dict)
    with pytest.warns(UserWarning, match="decode_head.conv_seg, auxiliary_head.conv_seg"):
        model = segzoo.create_model(name, checkpoint_path=path, num_classes=19)
    assert model.num_classes == 19
    for key, value in model.state_dict().items():
        if "conv_seg" in key:
            assert value.shape[0] == 19
        else:
            assert torch.equal(value, state_dict[key]), key
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 19, 64, 64)


def test_checkpoint_fine_tuned_to_new_classes_keeps_its_classifier(tmp_path):
    name = "moganet_xt_fpn_ade20k"
    state_dict = synthetic_state_dict(name)
    state_dict["decode_head.conv_seg.weight"] = torch.randn(5, *state_dict["decode_head.conv_seg.weight"].shape[1:])
    state_dict["decode_head.conv_seg.bias"] = torch.randn(5)
    path = save_mmseg_checkpoint(tmp_path / "fine_tuned.pth", state_dict)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is re-initialized, so nothing to warn about
        model = segzoo.create_model(name, checkpoint_path=path, num_classes=5)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state_dict[key]), key


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickled_code_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"w": torch.zeros(1)}, "meta": _RunsCode()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="does not unpickle arbitrary objects"):
        read_state_dict(path)
    assert not (tmp_path / "pwned").exists()


def test_unreadable_files_get_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        read_state_dict(tmp_path / "junk.pth")
    torch.save({"model": "nothing"}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="neither a state dict nor a checkpoint holding one"):
        read_state_dict(tmp_path / "odd.pth")


def test_numpy1_scalars_in_meta_are_accepted(tmp_path):
    """Checkpoints written under NumPy 1.x name the scalar type numpy.core.multiarray.scalar."""
    import io
    import zipfile

    import numpy as np

    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.ones(2)}, "meta": {"best": np.float64(0.5)}}, buffer)
    path = tmp_path / "numpy1.pth"
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            dst.writestr(item, data)
    assert torch.equal(read_state_dict(path)["w"], torch.ones(2))


class TrainingState:
    """Stands for the custom objects some training frameworks pickle into checkpoints."""

    def __init__(self, step):
        self.step = step


def test_checkpoints_needing_more_than_weights_only_require_opt_in(tmp_path):
    name = "moganet_xt_fpn_ade20k"
    path = tmp_path / "custom.pth"
    torch.save({"state_dict": synthetic_state_dict(name), "meta": TrainingState(7)}, path)
    with pytest.raises(CheckpointError, match="allow_unsafe_pickle=True"):
        segzoo.create_model(name, checkpoint_path=path)
    model = segzoo.create_model(name, checkpoint_path=path, allow_unsafe_pickle=True)
    _assert_loaded(model, synthetic_state_dict(name))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.mkdir(), "is a folder, not a checkpoint file"),
        (lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
        (lambda p: p.write_text("epoch 1: loss 0.53\nepoch 2: loss 0.41\n"), "is a text file"),
        (lambda p: p.write_text("<!DOCTYPE html><html><body>Sign in</body></html>"), "is a web page"),
        (lambda p: p.write_bytes(bytes(range(7, 256)) * 40), "neither a PyTorch file"),
        (lambda p: p.write_bytes(b"\x80\x02" + bytes(100)), "truncated or damaged"),
    ],
)
def test_each_kind_of_bad_file_gets_its_own_message(tmp_path, make, message):
    path = tmp_path / "weights.pth"
    make(path)
    with pytest.raises(CheckpointError, match=message) as err:
        segzoo.create_model("moganet_xt_fpn_ade20k", checkpoint_path=path)
    assert str(path) in str(err.value) and "allow_unsafe_pickle" not in str(err.value)


def test_safetensors_content_is_recognised_whatever_the_suffix(tmp_path):
    name = "moganet_xt_fpn_ade20k"
    path = tmp_path / "model.pth"
    safetensors.torch.save_file(synthetic_state_dict(name), path)
    _assert_loaded(segzoo.create_model(name, checkpoint_path=path), synthetic_state_dict(name))


def test_unsafe_pickle_advice_only_where_the_flag_exists(tmp_path, file_server, monkeypatch):
    name = "moganet_xt_fpn_ade20k"
    path = tmp_path / "custom.pth"
    torch.save({"state_dict": synthetic_state_dict(name), "meta": TrainingState(7)}, path)
    with pytest.raises(CheckpointError) as err:
        segzoo.create_model(name, checkpoint_path=path)
    assert "TrainingState" in str(err.value) and "allow_unsafe_pickle=True" in str(err.value)
    assert "weights_only=False" not in str(err.value)  # never torch's advice to turn the safety off
    shutil.copy(path, file_server.root / segzoo.model_info(name).weights[0].filename)
    monkeypatch.setenv("SEGZOO_MIRROR", file_server.url)
    with pytest.raises(CheckpointError) as err:
        segzoo.create_model(name, pretrained=True, progress=False)
    assert "TrainingState" in str(err.value) and "allow_unsafe_pickle" not in str(err.value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_floating_checkpoints_of_another_precision_are_cast(tmp_path, dtype, caplog):
    name = "moganet_xt_fpn_ade20k"
    state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in synthetic_state_dict(name).items()}
    path = save_mmseg_checkpoint(tmp_path / "half.pth", state_dict)
    with caplog.at_level("INFO", logger="segzoo"):
        model = segzoo.create_model(name, checkpoint_path=path)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert f"{dtype} -> torch.float32" in caplog.text
    assert model(torch.randn(1, 3, 64, 64)).dtype == torch.float32


def test_integer_weights_are_rejected_naming_file_key_and_dtypes(tmp_path):
    name = "moganet_xt_fpn_ade20k"
    state_dict = synthetic_state_dict(name)
    state_dict[KEY] = state_dict[KEY].to(torch.int32)
    path = save_mmseg_checkpoint(tmp_path / "int.pth", state_dict)
    with pytest.raises(CheckpointMismatchError) as err:
        segzoo.create_model(name, checkpoint_path=path)
    assert str(path) in str(err.value) and f"{KEY}: checkpoint torch.int32, model torch.float32" in str(err.value)


def test_checkpoint_in_another_layout_shows_both_layouts(tmp_path):
    name = "moganet_xt_fpn_ade20k"
    renamed = {f"sem_seg_head.{k}": v for k, v in synthetic_state_dict(name).items()}
    path = save_mmseg_checkpoint(tmp_path / "other.pth", renamed)
    with pytest.raises(CheckpointMismatchError) as err:
        segzoo.create_model(name, checkpoint_path=path)
    assert "the file holds: sem_seg_head.*" in str(err.value) and "the model expects: backbone.*" in str(err.value)


def _zip_archive(path, members: dict[str, bytes]):
    """A zip of files such as a release packs: a checkpoint with its code and notes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _mmseg_bytes(tmp_path, state_dict) -> bytes:
    return save_mmseg_checkpoint(tmp_path / "inner.pth", state_dict).read_bytes()


def test_zip_archive_of_files_is_told_apart_from_a_torch_zip(tmp_path):
    torch.save({"w": torch.ones(1)}, tmp_path / "plain.pth")  # torch.save's own zip format
    assert sniff_format(tmp_path / "plain.pth") == "torch-zip"
    archive = _zip_archive(tmp_path / "release.zip", {"model.pth": (tmp_path / "plain.pth").read_bytes()})
    assert sniff_format(archive) == "zip"
    with pytest.raises(CheckpointError, match="zip archive; read_state_dict finds the checkpoint"):
        load_checkpoint_object(archive)


def test_create_model_and_convert_read_the_checkpoint_inside_a_zip(tmp_path, capsys):
    name = "moganet_xt_fpn_ade20k"
    state_dict = synthetic_state_dict(name)
    archive = _zip_archive(
        tmp_path / "release.zip",
        {
            "moganet/README.md": b"# weights\n",
            "moganet/config.py": b"model = dict()\n",
            "moganet/iter_160000.pth": _mmseg_bytes(tmp_path, state_dict),
        },
    )
    _assert_loaded(segzoo.create_model(name, checkpoint_path=archive), state_dict)
    assert main(["convert", name, "--checkpoint", str(archive), "--out", str(tmp_path / "hub"), "--quiet"]) == 0
    converted = safetensors.torch.load_file(tmp_path / "hub" / "model.safetensors")
    assert all(torch.equal(converted[k], v) for k, v in state_dict.items() if v.is_floating_point())


def test_zip_archive_problems_name_the_archive(tmp_path):
    code_only = _zip_archive(tmp_path / "code.zip", {"train.py": b"print('hi')\n"})
    with pytest.raises(CheckpointError, match="holds no checkpoint.*segzoo inspect"):
        read_state_dict(code_only)
    broken = _zip_archive(tmp_path / "broken.zip", {"model.pth": b"\x80\x02 truncated"})
    with pytest.raises(CheckpointError, match=r"in the archive .*broken\.zip: .*model\.pth"):
        read_state_dict(broken)
    escaping = _zip_archive(tmp_path / "escaping.zip", {"../model.pth": _mmseg_bytes(tmp_path, {"w": torch.ones(1)})})
    with pytest.raises(CheckpointError, match="not extracted.*path with '..'"):
        read_state_dict(escaping)


def test_inspect_lists_zip_members_like_tar_members(tmp_path):
    archive = _zip_archive(
        tmp_path / "release.zip",
        {
            "release/README.md": b"# weights\n",
            "release/model.pth": _mmseg_bytes(tmp_path, {"w": torch.ones(3)}),
        },
    )
    lines = describe_file(archive)
    assert "format: zip archive" in lines and lines[2].startswith("members: 2 (2 files")
    assert any(line.endswith("release/README.md") for line in lines)
    assert "checkpoint: release/model.pth (the only one)" in lines
    assert any("weights under 'state_dict'" in line for line in lines)
    hostile = describe_file(_zip_archive(tmp_path / "hostile.zip", {"../../escape.pth": b"x"}))
    assert any("REFUSED: path with '..'" in line for line in hostile)
    assert any("not extracted" in line for line in hostile)
    (tmp_path / "damaged.zip").write_bytes(archive.read_bytes()[:-30])  # end of the central directory cut off
    with pytest.raises(CheckpointError, match="damaged.zip.*truncated or damaged"):
        read_state_dict(tmp_path / "damaged.zip")


def test_a_tar_ending_in_a_zip_member_is_read_as_the_tar(tmp_path):
    """zipfile finds a zip at the end of any file: the tar's own checkpoint must be the one read."""
    inner = _zip_archive(tmp_path / "inner.zip", {"decoy.pth": _mmseg_bytes(tmp_path, {"decoy": torch.zeros(1)})})
    save_mmseg_checkpoint(tmp_path / "model.pth", {"w": torch.ones(2)})
    with tarfile.open(tmp_path / "release.tar", "w") as tar:
        tar.add(tmp_path / "model.pth", "release/model.pth")
        tar.add(inner, "release/zz_inner.zip")
    assert zipfile.is_zipfile(tmp_path / "release.tar") and sniff_format(tmp_path / "release.tar") == "tar"
    assert read_state_dict(tmp_path / "release.tar").keys() == {"w"}


def test_mapped_safetensors_equal_the_library_for_every_dtype(tmp_path):
    tensors = {
        f"t.{dtype}".replace("torch.", ""): (torch.arange(6).reshape(2, 3) % 2).to(dtype)
        for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32)
        + (torch.int16, torch.int8, torch.uint8, torch.bool)
    }
    tensors["empty"] = torch.zeros(0, 4)
    tensors["scalar"] = torch.tensor(3.5)
    path = tmp_path / "all.safetensors"
    safetensors.torch.save_file(tensors, path)
    loaded = read_state_dict(path)  # mapped: segzoo's own reader
    expected = safetensors.torch.load_file(path)
    assert loaded.keys() == expected.keys()
    for key, tensor in expected.items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor), key


def _write_safetensors_by_hand(path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


def test_mapped_safetensors_leave_odd_files_to_the_library(tmp_path):
    """An offset not aligned to its dtype, or an entry whose range does not match its shape, is read or refused by
    safetensors itself, never mapped wrongly."""
    path = tmp_path / "odd.safetensors"
    data = b"\x01" + torch.arange(3.0).numpy().tobytes()
    header = {"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "b": {"dtype": "F32", "shape": [3]}}
    header["b"]["data_offsets"] = [1, 13]
    _write_safetensors_by_hand(path, header, data)
    assert torch.equal(read_state_dict(path)["b"], torch.arange(3.0))  # unaligned: the library copies it

    header["b"]["data_offsets"] = [4, 16.0]  # not a JSON integer: the library decides
    data = b"\x01\x00\x00\x00" + torch.arange(3.0).numpy().tobytes()
    _write_safetensors_by_hand(path, header, data)
    with pytest.raises(CheckpointError, match="cannot read .*odd.safetensors as safetensors"):
        read_state_dict(path)

    header["b"]["data_offsets"] = [1, 13]
    data = b"\x01" + torch.arange(3.0).numpy().tobytes()
    header["b"]["shape"] = [4]  # 16 bytes claimed, 12 there
    _write_safetensors_by_hand(path, header, data)
    with pytest.raises(CheckpointError, match="cannot read .*odd.safetensors as safetensors"):
        read_state_dict(path)
