"""The segzoo command, including the demo path against a local server."""
import subprocess
import sys

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
