"""The segzoo command, including the demo path against a local server."""
import subprocess
import sys

import numpy as np
from PIL import Image

import segzoo
from segzoo.cli import DEFAULT_MODEL, main, sample_image_path
from tests.conftest import closed_port_url, save_mmseg_checkpoint, synthetic_state_dict


def test_demo_predict_on_bundled_sample(file_server, monkeypatch, tmp_path, capsys):
    filename = segzoo.model_info(DEFAULT_MODEL).weights[0].filename
    save_mmseg_checkpoint(file_server.root / filename, synthetic_state_dict(DEFAULT_MODEL))
    monkeypatch.setenv("SEGZOO_MIRROR", file_server.url)
    out = tmp_path / "demo.png"
    assert main(["predict", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    sample = Image.open(sample_image_path())
    with Image.open(out) as result:
        assert result.mode == "RGB" and result.height >= sample.height and result.width > sample.width
    assert file_server.gets(f"/{filename}") == [None]


def test_predict_with_local_checkpoint(tmp_path):
    name = "moganet_xt_upernet_ade20k"
    ckpt = save_mmseg_checkpoint(tmp_path / "ckpt.pth", synthetic_state_dict(name))
    image = tmp_path / "photo.jpg"
    Image.new("RGB", (120, 90), (90, 140, 200)).save(image)
    out = tmp_path / "seg.png"
    assert main(["predict", str(image), "--model", "moganet_xt_upernet", "--checkpoint", str(ckpt), "-o", str(out)]) == 0
    with Image.open(out) as result:
        assert result.width > 120 and result.height >= 90


def test_offline_predict_fails_with_instructions(monkeypatch, capsys):
    monkeypatch.setenv("SEGZOO_MIRROR", closed_port_url())
    assert main(["predict", "--model", "moganet_xt_fpn"]) == 1
    err = capsys.readouterr().err
    assert "could not download" in err and "--checkpoint" in err


def test_unknown_model_suggests(capsys):
    assert main(["info", "moganet_s_fnp"]) == 1
    assert "did you mean moganet_s_fpn" in capsys.readouterr().err


def test_console_script_lists_models():
    result = subprocess.run([sys.executable, "-m", "segzoo.cli", "list", "moganet_*_upernet_*"],
                            capture_output=True, text=True, check=True)
    assert [line.split()[0] for line in result.stdout.splitlines()] == segzoo.list_models("moganet_*_upernet_*")


def test_predict_folder_and_files_with_indexed_label_output(tmp_path):
    name = "moganet_xt_fpn_ade20k"
    ckpt = save_mmseg_checkpoint(tmp_path / "ckpt.pth", synthetic_state_dict(name))
    folder = tmp_path / "photos"
    folder.mkdir()
    for stem, size in (("a", (40, 30)), ("b", (36, 36))):
        Image.new("RGB", size, (120, 80, 40)).save(folder / f"{stem}.jpg")
    (folder / "notes.txt").write_text("not an image")
    extra = tmp_path / "c.png"
    Image.new("RGB", (30, 44), (10, 10, 10)).save(extra)
    out = tmp_path / "out"
    args = ["predict", str(folder), str(extra), "-m", name, "-c", str(ckpt), "--output", "labels", "-o", str(out)]
    assert main(args) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == [f"{s}_{name}_labels.png" for s in "abc"]
    with Image.open(out / f"a_{name}_labels.png") as labels:
        assert labels.mode == "P" and labels.size == (40, 30)
        assert labels.getpalette()[:6] == [120, 120, 120, 180, 120, 120]  # ADE20K's first two colors
        assert np.asarray(labels).max() < 150


def test_predict_missing_input_is_a_clear_error(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nope.jpg")]) == 1
    assert "no such image or folder" in capsys.readouterr().err
