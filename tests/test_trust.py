"""What the checksums protect against: mirror manifests, the safetensors copies, bit rot and `segzoo verify`."""

import hashlib
import json
import os
import shutil

import pytest
import torch

import segzoo
from segzoo.cli import main
from segzoo.weights import ChecksumMismatchError
from segzoo.weights.cache import LOCK_FILE_NAME
from tests.conftest import save_mmseg_checkpoint, synthetic_state_dict

NAME = "moganet_xt_fpn_ade20k"
KEY = "decode_head.conv_seg.weight"


@pytest.fixture
def source():
    return segzoo.model_info(NAME).weights[0]


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _mirror_folder(tmp_path, source, manifest_seed, file_seed):
    """A mirror folder whose manifest describes one checkpoint while the folder holds another that also loads."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    (tmp_path / "described").mkdir()  # torch.save writes the file's stem into the archive: same name, same bytes
    described = save_mmseg_checkpoint(
        tmp_path / "described" / source.filename, synthetic_state_dict(NAME, seed=manifest_seed)
    )
    save_mmseg_checkpoint(folder / source.filename, synthetic_state_dict(NAME, seed=file_seed))
    manifest = {
        NAME: {
            "file": source.filename,
            "url": source.url,
            "sha256": _sha256(described),
            "size": described.stat().st_size,
        }
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _rot(path):
    """Change a byte in the middle of ``path`` and put its size and mtime back, as bit rot would."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.stat().st_size == stat.st_size


def test_mirror_folder_file_that_contradicts_its_manifest_is_refused(tmp_path, monkeypatch, source, isolated_cache):
    monkeypatch.setenv("SEGZOO_MIRROR", str(_mirror_folder(tmp_path, source, manifest_seed=0, file_seed=5)))
    with pytest.raises(ChecksumMismatchError, match="manifest.json says"):
        segzoo.create_model(NAME, pretrained=True, progress=False)
    assert not (isolated_cache / source.filename).exists()
    assert not (isolated_cache / LOCK_FILE_NAME).exists()  # nothing was recorded as trusted


def test_mirror_folder_file_that_matches_its_manifest_loads(tmp_path, monkeypatch, source):
    monkeypatch.setenv("SEGZOO_MIRROR", str(_mirror_folder(tmp_path, source, manifest_seed=0, file_seed=0)))
    model = segzoo.create_model(NAME, pretrained=True, progress=False)
    assert torch.equal(model.state_dict()[KEY], synthetic_state_dict(NAME)[KEY])


def test_url_mirror_file_that_contradicts_its_manifest_is_refused(
    file_server, tmp_path, monkeypatch, source, isolated_cache
):
    folder = _mirror_folder(tmp_path, source, manifest_seed=0, file_seed=5)
    for item in folder.iterdir():
        shutil.copy(item, file_server.root / item.name)
    monkeypatch.setenv("SEGZOO_MIRROR", file_server.url)
    with pytest.raises(ChecksumMismatchError, match="manifest.json says"):
        segzoo.create_model(NAME, pretrained=True, progress=False)
    assert not (isolated_cache / source.filename).exists()


@pytest.fixture
def cached(file_server, monkeypatch, isolated_cache, source):
    """The entry loaded once through a URL mirror: the .pth, its safetensors copy and the lock records."""
    save_mmseg_checkpoint(file_server.root / source.filename, synthetic_state_dict(NAME))
    monkeypatch.setenv("SEGZOO_MIRROR", file_server.url)
    segzoo.create_model(NAME, pretrained=True, progress=False)
    pth = isolated_cache / source.filename
    return pth, pth.with_suffix(".safetensors")


def test_safetensors_copy_has_its_own_recorded_checksum(cached, isolated_cache, source):
    pth, copy = cached
    record = json.loads((isolated_cache / LOCK_FILE_NAME).read_text())[source.url]
    assert record["sha256"] == _sha256(pth) and record["derived"]["sha256"] == _sha256(copy)


def test_always_verify_catches_a_rotten_safetensors_copy(cached, monkeypatch, file_server):
    pth, copy = cached
    _rot(copy)
    rotten = _sha256(copy)
    monkeypatch.setenv("SEGZOO_VERIFY", "always")
    model = segzoo.create_model(NAME, pretrained=True, progress=False)
    assert torch.equal(model.state_dict()[KEY], synthetic_state_dict(NAME)[KEY])
    assert _sha256(copy) != rotten  # rebuilt from the verified original
    assert len(file_server.gets(f"/{pth.name}")) == 1


def test_verify_argument_catches_a_rotten_original(cached, file_server):
    pth, copy = cached
    copy.unlink()
    _rot(pth)
    file_server.close()  # the good file cannot be fetched again: the error must not load the rotten one
    segzoo.create_model(NAME, pretrained=True, progress=False)  # unchanged size and mtime: not re-hashed
    with pytest.raises(segzoo.weights.WeightsUnavailableError):
        segzoo.create_model(NAME, pretrained=True, progress=False, verify=True)
    assert not pth.exists()


def test_segzoo_verify_reports_and_removes_rotten_files(cached, capsys):
    pth, copy = cached
    assert main(["verify", NAME]) == 0
    assert capsys.readouterr().out.count("ok") == 2
    _rot(pth)
    assert main(["verify", "--all", "--keep"]) == 1
    out = capsys.readouterr()
    assert "mismatch" in out.out and str(pth) in out.out and pth.exists()
    assert main(["verify", NAME]) == 1
    assert not pth.exists() and not copy.exists()  # the copy came from a file no longer trusted
    assert "removed" in capsys.readouterr().out


def test_verify_setting_is_checked(monkeypatch, cached):
    monkeypatch.setenv("SEGZOO_VERIFY", "sometimes")
    with pytest.raises(segzoo.weights.WeightsError, match="SEGZOO_VERIFY"):
        segzoo.create_model(NAME, pretrained=True, progress=False)
