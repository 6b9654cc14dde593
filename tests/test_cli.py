"""The segzoo command, including the demo path against a local server."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
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
    assert (
        main(["predict", str(image), "--model", "moganet_xt_upernet", "--checkpoint", str(ckpt), "-o", str(out)]) == 0
    )
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
    result = subprocess.run(
        [sys.executable, "-m", "segzoo.cli", "list", "moganet_*_upernet_*"], capture_output=True, text=True, check=True
    )
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


def checkpoint_and_photos(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A synthetic checkpoint of ``name`` and a folder holding one good photo, ``a.jpg``."""
    ckpt = save_mmseg_checkpoint(tmp_path / "ckpt.pth", synthetic_state_dict(name))
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (40, 30), (120, 80, 40)).save(folder / "a.jpg")
    return ckpt, folder


def test_one_unreadable_image_never_costs_the_others(tmp_path, capsys):
    name = "moganet_xt_fpn_ade20k"
    ckpt, folder = checkpoint_and_photos(tmp_path, name)
    (folder / "b.jpg").write_bytes(b"this is not a jpeg")
    Image.new("RGB", (36, 36), (10, 80, 40)).save(folder / "c.png")
    out = tmp_path / "out"
    assert main(["predict", str(folder), "-m", name, "-c", str(ckpt), "-o", str(out), "--quiet"]) == 1
    assert sorted(p.name for p in out.iterdir()) == [f"a_{name}_labels.png", f"c_{name}_labels.png"]
    err = capsys.readouterr().err
    assert f"segzoo: error: {folder / 'b.jpg'}: not an image (" in err and "Traceback" not in err


def test_every_command_that_shows_progress_takes_quiet():
    from segzoo.cli import build_parser

    parser = build_parser()
    for command in ("predict", "eval", "prepare", "download", "pin", "convert"):
        help_text = parser._subparsers._group_actions[0].choices[command].format_help()
        assert "--quiet" in help_text, command


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "--checkpoint", "missing.pth"], "checkpoint file not found: missing.pth"),
        (["eval", "moganet_xt_fpn", "--data-root", "nowhere"], "is not a folder"),
        (["inspect", "missing.pth"], "not found"),
        (["eval", "moganet_xt_fpn", "--data-root", ".", "--limit", "0"], None),
    ],
)
def test_user_errors_never_print_tracebacks(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if message is None:  # argparse rejects the value itself
        with pytest.raises(SystemExit):
            main(argv)
        assert "positive whole number" in capsys.readouterr().err
        return
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("segzoo: error:") and message in err and "Traceback" not in err


def test_unsafe_checkpoint_needs_the_flag_on_the_command_line(tmp_path, capsys):
    name = "moganet_xt_fpn_ade20k"
    path = tmp_path / "custom.pth"
    torch.save({"state_dict": synthetic_state_dict(name), "meta": _Opaque()}, path)
    image = tmp_path / "photo.png"
    Image.new("RGB", (48, 40), (90, 140, 200)).save(image)
    args = ["predict", str(image), "-m", name, "-c", str(path), "-o", str(tmp_path / "x.png")]
    assert main(args) == 1
    assert "--allow-unsafe-pickle" in capsys.readouterr().err
    assert main([*args, "--allow-unsafe-pickle"]) == 0


class _Opaque:
    """An object of the kind training frameworks pickle into checkpoints."""


def test_emanet_demo_draws_the_cityscapes_palette_and_legend(tmp_path, monkeypatch):
    import dataclasses

    from segzoo import registry

    name = "emanet_r101_cityscapes"
    info = registry._catalog().by_name[name]
    small = dataclasses.replace(info.test_pipeline, scale=(64, 128))  # the real test size takes minutes on a CPU
    monkeypatch.setitem(registry._catalog().by_name, name, dataclasses.replace(info, test_pipeline=small))
    ckpt = tmp_path / "emanet.pth"
    torch.save({"model": synthetic_state_dict(name), "iteration": 1}, ckpt)
    image = tmp_path / "street.png"
    Image.new("RGB", (96, 48), (70, 130, 180)).save(image)
    overlay, labels = tmp_path / "overlay.png", tmp_path / "labels.png"
    assert main(["predict", str(image), "-m", name, "-c", str(ckpt), "-o", str(overlay), "-q"]) == 0
    assert main(["predict", str(image), "-m", name, "-c", str(ckpt), "-o", str(labels), "--output", "labels"]) == 0
    with Image.open(overlay) as drawn:
        assert drawn.width > 96  # the legend beside the image
    with Image.open(labels) as indexed:
        assert indexed.mode == "P" and indexed.size == (96, 48)
        assert indexed.getpalette()[:6] == [128, 64, 128, 244, 35, 232]  # Cityscapes: road, sidewalk


@pytest.mark.parametrize(
    "name, scale, first_colors",
    [
        ("regproxy_vit_ti16_ade20k", (256, 128), [120, 120, 120, 180, 120, 120]),
        ("regproxy_vit_ti16_cityscapes", (256, 128), [128, 64, 128, 244, 35, 232]),  # padded slide windows
        ("eurnet_t_upernet_ade20k", (256, 128), [120, 120, 120, 180, 120, 120]),
    ],
)
def test_demo_path_of_each_mmseg_family(tmp_path, monkeypatch, name, scale, first_colors):
    import dataclasses

    from segzoo import registry

    info = registry._catalog().by_name[name]
    small = dataclasses.replace(info.test_pipeline, scale=scale)  # the real test sizes are slow on a CPU
    monkeypatch.setitem(registry._catalog().by_name, name, dataclasses.replace(info, test_pipeline=small))
    ckpt = save_mmseg_checkpoint(tmp_path / "upstream.pth", synthetic_state_dict(name))  # the upstream layout
    image = tmp_path / "photo.png"
    Image.new("RGB", (96, 48), (120, 90, 60)).save(image)
    out = tmp_path / "labels.png"
    assert main(["predict", str(image), "-m", name, "-c", str(ckpt), "-o", str(out), "--output", "labels", "-q"]) == 0
    with Image.open(out) as indexed:
        assert indexed.size == (96, 48) and indexed.getpalette()[:6] == first_colors


@pytest.mark.parametrize(
    "flags, agreement",
    [(["--fast"], 0.999), (["--precision", "bf16"], 0.9)],  # bf16 rounding flips near-ties of random weights
)
def test_predict_fast_path_and_bf16_write_nearly_the_same_labels(tmp_path, flags, agreement):
    name = "moganet_xt_fpn_ade20k"
    ckpt = save_mmseg_checkpoint(tmp_path / "ckpt.pth", synthetic_state_dict(name))
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 110, 3), dtype=np.uint8)).save(image)
    outputs = []
    for extra in ([], flags):
        out = tmp_path / f"labels{len(extra)}.png"
        argv = ["predict", str(image), "-m", name, "-c", str(ckpt), "--output", "labels", "-o", str(out)]
        assert main(argv + extra) == 0
        outputs.append(np.asarray(Image.open(out)))
    assert outputs[1].shape == outputs[0].shape
    assert (outputs[1] == outputs[0]).mean() > agreement


def test_train_is_the_training_packages_plugin_command(capsys):
    from importlib.metadata import entry_points

    plugins = {plugin.name: plugin.value for plugin in entry_points(group="segzoo.commands")}
    assert plugins["train"] == "segzoo.training.cli:register"
    with pytest.raises(SystemExit) as done:
        main(["train", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: segzoo train") and "--print-recipe" in out and "--resume" in out


def test_building_the_command_line_loads_no_training_loop_data_or_recipes():
    """``segzoo --help`` and ``segzoo list`` stay fast: the train plugin adds its options, nothing more."""
    code = "import sys; from segzoo.cli import build_parser; build_parser(); print(*sorted(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "segzoo.training.cli" in loaded
    heavy = [
        m
        for m in loaded
        if m in ("segzoo.training.loop", "segzoo.training.data", "segzoo.training.transforms")
        or m.startswith("segzoo.training.recipes.")
        and m != "segzoo.training.recipes._registry"
    ]
    assert not heavy


def test_weights_hints_name_only_options_of_their_command():
    """Each command's hint for weights it cannot fetch names options that command's own parser accepts."""
    import argparse
    import re

    from segzoo.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    hinted = {}
    for name, parser in commands.items():
        hint = parser.get_default("weights_hint")
        if hint is None:
            continue
        cases = [{}] if name != "train" else [{"custom": "custom:d", "pretrained": None}, {"custom": None}]
        for case in cases:
            args = argparse.Namespace(command=name, **{"custom": None, "pretrained": None, **case})
            text = hint(args)
            flags = re.findall(r"(?<![\w-])--[a-z][a-z-]*", text)
            assert flags and all(flag in parser._option_string_actions for flag in flags), (name, text)
            hinted.setdefault(name, []).append(text)
    assert {"predict", "eval", "export", "train"} <= hinted.keys()
    assert len(set(hinted["train"])) == 2  # published weights and ImageNet backbone each get theirs


def test_predict_reports_an_image_too_elongated_and_a_broken_link_and_goes_on(tmp_path, capsys):
    name = "moganet_xt_fpn_ade20k"
    ckpt, folder = checkpoint_and_photos(tmp_path, name)
    Image.new("RGB", (100_000, 3), (120, 80, 40)).save(folder / "b.png")  # beyond 4096:1
    (folder / "c.png").symlink_to(tmp_path / "gone.png")
    Image.new("RGB", (36, 36), (10, 80, 40)).save(folder / "d.png")
    out = tmp_path / "out"
    assert main(["predict", str(folder), "-m", name, "-c", str(ckpt), "-o", str(out), "-q"]) == 1
    assert sorted(p.name for p in out.iterdir()) == [f"a_{name}_labels.png", f"d_{name}_labels.png"]
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines[0].startswith(f"segzoo: error: {folder / 'b.png'}: image (100000x3 pixels): too elongated")
    assert "4096:1" in lines[0]
    assert lines[1] == f"segzoo: error: {folder / 'c.png'}: a link to {tmp_path / 'gone.png'}, which does not exist"
    assert lines[2] == "segzoo: error: 2 of 4 files were not segmented (see above)"


def _error_line(argv: list[str], capsys) -> str:
    """The one line a command-line mistake prints, after checking it ends the command with status 1."""
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("segzoo: error: ") and "usage:" not in err
    return err


@pytest.mark.parametrize("command", [["predict"], ["eval", "moganet_xt_fpn", "--data-root", "."], ["train", "x"]])
def test_an_unavailable_device_is_one_error_line_for_every_command(command, capsys):
    for device in ("tpu", "meta") + (() if torch.cuda.is_available() else ("cuda", "cuda:1")):
        err = _error_line([*command, "--device", device], capsys)
        assert "argument --device: " in err and device in err
    if not torch.cuda.is_available():
        assert "use --device cpu" in _error_line([*command, "--device", "cuda"], capsys)


def test_argument_errors_are_one_line_and_verbose_goes_before_or_after_the_command(capsys):
    assert "unrecognized arguments: --bogus" in _error_line(["predict", "--bogus"], capsys)
    assert "required: command" in _error_line([], capsys)
    assert "positive whole number" in _error_line(["eval", "x", "--data-root", ".", "--limit", "0"], capsys)
    assert "name models or pass --all" in _error_line(["verify"], capsys)
    from segzoo.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["list", "-v"]).verbose and parser.parse_args(["-v", "list"]).verbose
    assert not parser.parse_args(["list"]).verbose


_HEAVY = ("torch", "numpy", "timm", "cv2", "PIL")


@pytest.mark.parametrize(
    "argv", [["list"], ["list", "moganet_*"], ["info", "moganet_s_fpn"], ["info", "no_such_model"], ["--help"]]
)
def test_list_and_info_answer_without_importing_torch(argv):
    """``segzoo list`` and ``segzoo info`` read the zoo's records only (an unknown name included): no torch, numpy,
    timm, OpenCV or Pillow is imported, so they answer at once."""
    code = (
        "import sys; from segzoo.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print('LOADED', *sorted(sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = done.stdout.rsplit("LOADED", 1)[1].split()
    assert [m for m in loaded if m.split(".")[0] in _HEAVY] == []


def test_list_says_when_no_model_matches(capsys):
    assert main(["list", "zzz*"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "segzoo: error: no registered model matches 'zzz*' (see 'segzoo list')\n"
