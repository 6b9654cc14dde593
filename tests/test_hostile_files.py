"""Hostile and odd files end fast with one clear line: decompression bombs, look-alikes, deep nesting, archives
with several checkpoints, state dicts with odd keys or values, pickles of newer protocols, huge key sets."""

import dataclasses
import io
import json
import os
import pickle
import socket
import subprocess
import sys
import tarfile
import time
import zipfile

import pytest
import torch

import segzoo
from segzoo.cli import main
from segzoo.weights import CheckpointError, UnsafeCheckpointError, read_state_dict
from segzoo.weights.archive import SCRATCH_FOLDER_NAME, extracted_checkpoint
from segzoo.weights.checkpoint import sniff_format
from segzoo.weights.inspect import describe_file
from segzoo.zoo import WeightSource
from tests.conftest import synthetic_state_dict

NAME = "moganet_xt_fpn_ade20k"
FAST_S = 10  # "within seconds", with room for a loaded test machine


def _checkpoint_bytes(state_dict) -> bytes:
    buffer = io.BytesIO()
    torch.save({"state_dict": state_dict}, buffer)
    return buffer.getvalue()


def _zip(members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _tar(members: dict[str, bytes], mode="w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _fails_fast_everywhere(path, capsys, match):
    """``create_model``, ``segzoo convert`` and ``segzoo inspect`` each end within seconds with one line."""
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=match) as err:
        segzoo.create_model(NAME, checkpoint_path=path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert main(["convert", NAME, "--checkpoint", str(path), "--out", str(path.parent / "out"), "--quiet"]) == 1
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("segzoo: error:"), err_lines
    main(["inspect", str(path)])
    out = capsys.readouterr()
    assert len(out.out) + len(out.err) < 20_000
    assert any(word in out.out + out.err for word in ("not extracted", "not listed", "segzoo: error:"))
    assert time.perf_counter() - start < 3 * FAST_S


def _no_scratch_left(cache):
    scratch = cache / SCRATCH_FOLDER_NAME
    assert not scratch.exists() or not any(scratch.iterdir())


def test_a_file_of_zeros_is_not_an_archive(tmp_path):
    path = tmp_path / "zeros.pth"
    with open(path, "wb") as f:
        f.truncate(100 << 20)  # 100 MiB of zeros, sparse on disk
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="is not a checkpoint: its .* bytes are neither"):
        sniff_format(path)
    assert time.perf_counter() - start < 2


def test_zip_bomb_is_refused_by_its_declared_ratio(tmp_path, capsys, isolated_cache):
    path = tmp_path / "bomb.zip"
    path.write_bytes(_zip({"README.md": b"weights\n", "model.pth": bytes(16 << 20)}))
    _fails_fast_everywhere(path, capsys, r"expands \d+ times .*decompression bomb.*SEGZOO_ARCHIVE_MAX_RATIO")
    _no_scratch_left(isolated_cache)


def test_tar_gz_bomb_is_cut_off_while_it_is_listed(tmp_path, capsys, isolated_cache):
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(_tar({"model.pth": bytes(16 << 20)}, mode="w:gz"))
    _fails_fast_everywhere(path, capsys, r"expands more than 100 times.*SEGZOO_ARCHIVE_MAX_RATIO")
    _no_scratch_left(isolated_cache)


def test_a_trusted_archive_passes_with_raised_limits_and_lowered_ones_stop_it(tmp_path, monkeypatch):
    state_dict = {"w": torch.zeros(1 << 19)}  # 2 MiB of zeros: compresses like a bomb
    path = tmp_path / "zeros.tar.gz"
    path.write_bytes(_tar({"model.pth": _checkpoint_bytes(state_dict)}, mode="w:gz"))
    with pytest.raises(CheckpointError, match="decompression bomb"):
        read_state_dict(path)
    monkeypatch.setenv("SEGZOO_ARCHIVE_MAX_RATIO", "100000")
    assert torch.equal(read_state_dict(path)["w"], state_dict["w"])
    monkeypatch.setenv("SEGZOO_ARCHIVE_MAX_TOTAL_BYTES", str(1 << 20))
    with pytest.raises(CheckpointError, match="expands to more than 1048576 bytes.*SEGZOO_ARCHIVE_MAX_TOTAL_BYTES"):
        read_state_dict(path)
    monkeypatch.setenv("SEGZOO_ARCHIVE_MAX_RATIO", "zero")
    with pytest.raises(CheckpointError, match="SEGZOO_ARCHIVE_MAX_RATIO='zero' is not valid"):
        read_state_dict(path)


def _nested(levels: int, inner: bytes, name="model.pth") -> bytes:
    """``inner`` packed ``levels`` times, alternating zip and tar as releases do."""
    data = inner
    for level in range(levels):
        if level % 2:
            data, name = _tar({name: data}), f"level{level}.tar"
        else:
            data, name = _zip({name: data}, compression=zipfile.ZIP_STORED), f"level{level}.zip"
    return data


def test_archives_nest_at_most_three_deep(tmp_path, capsys):
    state_dict = {"w": torch.ones(2)}
    for levels in (1, 2, 3):
        path = tmp_path / f"nested{levels}.bin"
        path.write_bytes(_nested(levels, _checkpoint_bytes(state_dict)))
        assert torch.equal(read_state_dict(path)["w"], state_dict["w"]), levels
    path = tmp_path / "nested4.bin"
    path.write_bytes(_nested(4, _checkpoint_bytes(state_dict)))
    with pytest.raises(CheckpointError, match="nested more than 3 deep.*SEGZOO_ARCHIVE_MAX_DEPTH"):
        read_state_dict(path)
    assert any("nested more than 3 deep" in line for line in describe_file(path))


def test_1500_levels_of_nesting_end_in_one_line_not_a_recursion_error(tmp_path, capsys):
    path = tmp_path / "deep.zip"
    data = _checkpoint_bytes({"w": torch.ones(1)})
    name = "model.pth"
    for level in range(1500):
        data, name = _zip({name: data}, compression=zipfile.ZIP_STORED), f"level{level}.zip"
    path.write_bytes(data)
    _fails_fast_everywhere(path, capsys, "nested more than 3 deep")


def test_two_candidate_checkpoints_need_the_recorded_member(tmp_path, capsys):
    real, decoy = {"w": torch.ones(2)}, {"decoy": torch.zeros(1000)}
    path = tmp_path / "release.zip"
    path.write_bytes(_zip({"release/real.pth": _checkpoint_bytes(real), "release/big.pth": _checkpoint_bytes(decoy)}))
    with pytest.raises(CheckpointError, match=r"holds 2 checkpoint files .*release/real\.pth .*release/big\.pth"):
        read_state_dict(path)
    assert read_state_dict(path, member="release/real.pth").keys() == {"w"}
    with pytest.raises(CheckpointError, match="has no single member 'other.pth'"):
        read_state_dict(path, member="other.pth")
    assert main(["inspect", str(path)]) == 0
    assert "holds 2 checkpoint files" in capsys.readouterr().out


def test_published_archive_reads_the_member_its_entry_records(file_server, monkeypatch):
    from segzoo import registry

    state_dict = synthetic_state_dict(NAME)
    larger = _checkpoint_bytes({"x": torch.ones(1 << 16)})
    (file_server.root / "release.tar").write_bytes(
        _tar({"code/model.pth": _checkpoint_bytes(state_dict), "code/larger.pth": larger})
    )
    entry = registry._catalog().by_name[NAME]
    for member in (None, "code/model.pth"):
        source = WeightSource(url=f"{file_server.url}/release.tar", format="mmseg", kind="archive", member=member)
        monkeypatch.setitem(registry._catalog().by_name, NAME, dataclasses.replace(entry, weights=(source,)))
        if member is None:
            with pytest.raises(CheckpointError, match="holds 2 checkpoint files"):
                segzoo.create_model(NAME, pretrained=True, progress=False)
            continue
        model = segzoo.create_model(NAME, pretrained=True, progress=False)
        key = "decode_head.conv_seg.weight"
        assert torch.equal(model.state_dict()[key], state_dict[key])


def test_scratch_folders_of_killed_processes_are_swept(tmp_path, isolated_cache):
    scratch = isolated_cache / SCRATCH_FOLDER_NAME
    scratch.mkdir(parents=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    killed = scratch / f"{host}@{gone.stdout.strip()}-abc"
    living = scratch / f"{host}@{os.getpid()}-def"
    old = scratch / "otherhost@1-ghi"
    for folder in (killed, living, old):
        folder.mkdir()
        (folder / "model.pth").write_bytes(b"x" * 1000)
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    path = tmp_path / "release.zip"
    path.write_bytes(_zip({"model.pth": _checkpoint_bytes({"w": torch.ones(1)})}))
    with extracted_checkpoint(path) as checkpoint:
        assert checkpoint.is_relative_to(scratch)
    assert sorted(p.name for p in scratch.iterdir()) == [living.name]


def test_a_killed_inspect_leaves_its_member_for_the_next_start_to_remove(tmp_path, isolated_cache):
    path = tmp_path / "release.zip"
    path.write_bytes(_zip({"model.pth": _checkpoint_bytes({"w": torch.ones(1)})}))
    script = (
        "import os, signal, sys\n"
        "from segzoo.weights.archive import extracted_checkpoint\n"
        "with extracted_checkpoint(sys.argv[1]) as checkpoint:\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "SEGZOO_CACHE": str(isolated_cache)}
    subprocess.run([sys.executable, "-c", script, str(path)], env=env, check=False, timeout=120)
    scratch = isolated_cache / SCRATCH_FOLDER_NAME
    assert len(list(scratch.iterdir())) == 1  # the killed process's folder
    with extracted_checkpoint(path):
        pass
    _no_scratch_left(isolated_cache)


@pytest.mark.slow
def test_bombs_at_full_size_end_within_seconds(tmp_path, capsys):
    zip_path = tmp_path / "gib.zip"
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf, zf.open("model.pth", "w") as f:
        for _ in range(1024):
            f.write(bytes(1 << 20))
    assert zip_path.stat().st_size < 2 << 20
    _fails_fast_everywhere(zip_path, capsys, "decompression bomb")

    class _Zeros(io.RawIOBase):
        def readable(self):
            return True

        def readinto(self, buffer):
            buffer[:] = bytes(len(buffer))
            return len(buffer)

    tar_path = tmp_path / "gib.tar.gz"
    with tarfile.open(tar_path, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("model.pth")
        info.size = 1 << 30
        tar.addfile(info, io.BufferedReader(_Zeros()))
    _fails_fast_everywhere(tar_path, capsys, "decompression bomb")


# Odd content: each gets its own line naming the file and what was found.


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_malicious_pickles_of_every_protocol_are_reported_as_unsafe(tmp_path, capfd, protocol):
    path = tmp_path / f"evil{protocol}.pth"
    path.write_bytes(pickle.dumps({"state_dict": {"w": 1}, "meta": _RunsCode()}, protocol=protocol))
    with pytest.raises(UnsafeCheckpointError, match="system") as err:
        segzoo.create_model(NAME, checkpoint_path=path)
    message = str(err.value)
    assert str(path) in message and "allow_unsafe_pickle" in message and "\n" not in message
    assert main(["inspect", str(path)]) == 0
    out, stderr = capfd.readouterr()
    assert "not readable safely" in out and "allow_unsafe_pickle" in out and "system" in out
    assert "Warning" not in stderr and "weights_only" not in out + stderr


def test_tensor_pickle_of_a_newer_protocol_says_how_to_read_it(tmp_path, capfd):
    path = tmp_path / "proto4.pth"
    torch.save({"w": torch.ones(2)}, path, pickle_protocol=4)
    with pytest.raises(UnsafeCheckpointError, match=r"pickle of protocol 4 .*allow_unsafe_pickle") as err:
        segzoo.create_model(NAME, checkpoint_path=path)
    assert "\n" not in str(err.value)
    assert "Warning" not in capfd.readouterr().err


@pytest.mark.parametrize(
    "content, found",
    [
        ({"state_dict": {1: torch.ones(1)}}, r"keys that are not parameter names, e\.g\. 1 \(int\)"),
        ({"model": {("a", "b"): torch.ones(1)}}, r"keys that are not parameter names, e\.g\. \('a', 'b'\) \(tuple\)"),
        ({"state_dict": {"w": torch.ones(1), "b": [1, 2]}}, r"1 values that are not tensors, e\.g\. 'b': a list"),
    ],
)
def test_odd_state_dicts_get_their_own_line(tmp_path, capsys, content, found):
    path = tmp_path / "odd.pth"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=found) as err:
        segzoo.create_model(NAME, checkpoint_path=path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert main(["inspect", str(path)]) == 0
    assert "not loadable" in capsys.readouterr().out


def _safetensors_header_only(path, header: dict) -> None:
    """A safetensors file written by hand: the header, then zeros for the tensors it lists."""
    raw = json.dumps(header).encode()
    end = max((entry["data_offsets"][1] for entry in header.values() if "data_offsets" in entry), default=0)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(end))


def test_inspect_folds_a_huge_key_set(tmp_path, capsys):
    header = {f"t{i}": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i in range(20_000)}
    header.update({f"layer.{i}.w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]} for i in range(20_000)})
    header.update({"flat." + "x" * 5000: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})
    path = tmp_path / "many.safetensors"
    _safetensors_header_only(path, header)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "tensors: 40001" in out and "more prefixes" in out
    assert len(out) < 20_000 and max(len(line) for line in out.splitlines()) < 400


def test_an_oversized_safetensors_header_is_not_read(tmp_path):
    path = tmp_path / "huge.safetensors"
    with open(path, "wb") as f:
        f.write((100 << 20).to_bytes(8, "little") + b"{")
        f.truncate(120 << 20)
    with pytest.raises(CheckpointError, match="safetensors header of 104,857,600 bytes, over"):
        read_state_dict(path)
    with pytest.raises(CheckpointError, match="safetensors header"):
        describe_file(path)


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_tars_are_recognised_by_their_bytes_compressed_or_not(tmp_path, mode):
    path = tmp_path / "release.bin"
    path.write_bytes(_tar({"release/model.pth": _checkpoint_bytes({"w": torch.ones(2)})}, mode=mode))
    assert sniff_format(path) == "tar"
    assert torch.equal(read_state_dict(path)["w"], torch.ones(2))


def test_a_compressed_checkpoint_that_is_no_tar_says_so(tmp_path):
    import gzip

    path = tmp_path / "model.pth.gz"
    path.write_bytes(gzip.compress(_checkpoint_bytes({"w": torch.ones(2)})))
    with pytest.raises(CheckpointError, match="gzip-compressed file but not a tar archive; decompress it"):
        read_state_dict(path)
