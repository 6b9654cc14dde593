"""The benchmarks' shared timing loop, and the zoo benchmark's bookkeeping: which rows a run replaces, and what
its markdown table says."""

import contextlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def load_benchmark(name):
    """``benchmarks/<name>.py`` as a module, its folder on the path while it loads, as when it runs as a script."""
    folder = str(REPO / "benchmarks")
    sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_benchmark", REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while it loads
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    return module


@pytest.fixture
def zoo():
    return load_benchmark("zoo")


def test_interleaved_runs_take_turns_after_untimed_warmup_rounds(monkeypatch):
    measure = load_benchmark("measure")
    calls = []

    @contextlib.contextmanager
    def around(name):
        calls.append(f"enter {name}")
        yield
        calls.append(f"exit {name}")

    runners = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    seconds = measure.interleaved_seconds(runners, runs=2, warmup=1, around=around)
    assert calls == ["enter a", "a", "exit a", "enter b", "b", "exit b"] * 3
    assert {name: len(times) for name, times in seconds.items()} == {"a": 2, "b": 2}
    assert measure.pair_ratios([2.0, 6.0], [1.0, 2.0]) == [2.0, 3.0]


def measured(mode, device, images_per_s="10"):
    return dict(
        name="regproxy_vit_ti16_ade20k",
        family="regproxy",
        resolution="512x683",
        mode=mode,
        device=device,
        device_name="NVIDIA H100" if device == "cuda" else "Xeon",
        images_per_s=images_per_s,
        note="",
    )


def test_a_cpu_run_keeps_measured_gpu_rows_and_marks_the_missing_ones(zoo):
    gpu_row = measured("bf16", "cuda")
    rows = [gpu_row, measured("eager", "cpu", "1")]
    placeholders = zoo.placeholder_rows("regproxy_vit_ti16_ade20k", "test", torch.device("cpu"), ["fast+compile"])
    assert {(r["mode"], r["device"], r["note"]) for r in placeholders} == {
        ("fast+compile", "cpu", "not measured (--no-compile)"),
        ("bf16", "cuda", "needs GPU"),
        ("bf16+compile", "cuda", "needs GPU"),
        ("bf16+cuda-graphs", "cuda", "needs GPU"),
    }
    rows, added = zoo.merge_rows(rows, [measured("eager", "cpu", "2")], placeholders)
    assert gpu_row in rows and gpu_row not in added
    by_key = {zoo.row_key(r): r for r in rows}
    assert by_key[("regproxy_vit_ti16_ade20k", "512x683", "eager", "cpu")]["images_per_s"] == "2"
    assert by_key[("regproxy_vit_ti16_ade20k", "512x683", "bf16+compile", "cuda")]["note"] == "needs GPU"
    assert len(rows) == 5


def test_the_table_names_each_device_and_sets_the_papers_speed_beside_the_gpu_rows(zoo, tmp_path):
    out = tmp_path / "zoo.csv"
    machines = {"cpu": "- cpu: Xeon, 2 CPU threads", "cuda": "- cuda: NVIDIA H100, 16 CPU threads"}
    zoo.write_outputs(
        out, [measured("eager", "cuda", "50"), measured("eager", "cpu", "1")], zoo.machine_header(machines)
    )
    table = out.with_suffix(".md").read_text()
    assert zoo.machine_lines(out.with_suffix(".md")) == machines
    assert "| regproxy_vit_ti16_ade20k | 38.9 FPS | NVIDIA H100 | 50 (0.02 s/im) | needs GPU |" in table
    assert "| emanet_r50_cityscapes | 0.11 s/im | - | needs GPU |" in table


def test_training_benchmark_generates_paired_shapes_of_three_classes(tmp_path):
    train = load_benchmark("train")
    root = train.make_shapes_dataset(tmp_path, train=3, val=1, size=32)
    for split, count in (("train", 3), ("val", 1)):
        images = sorted(p.stem for p in (root / "images" / split).glob("*.png"))
        labels = sorted((root / "labels" / split).glob("*.png"))
        assert images == [p.stem for p in labels] and len(images) == count
    values = set()
    for path in (root / "labels" / "train").glob("*.png"):
        with Image.open(path) as label:
            assert label.mode == "L" and label.size == (32, 32)
            values |= set(np.unique(np.asarray(label)).tolist())
    assert values <= {0, 1, 2} and 0 in values and len(values) > 1
    args = train.build_parser().parse_args(["curve", "--iters", "5", "--start", "random"])
    assert (args.run, args.iters, args.start) == (train.record_curve, 5, "random")


def test_training_curve_figure_is_drawn_from_the_recorded_log(tmp_path):
    pytest.importorskip("matplotlib")
    figures = load_benchmark("figures")
    record = {
        "entry": "moganet_xt_fpn_ade20k",
        "start": "random",
        "train_images": 4,
        "classes": ["background", "disc", "square"],
        "machine": {"cpu": "Xeon"},
        "threads": 2,
        "wall_s": 9,
        "log": [
            {"iter": 5, "loss": 1.0, "lr": 1e-4},
            {"iter": 10, "loss": 0.5, "lr": 1e-4},
            {"iter": 10, "eval": {"aAcc": 90.0, "mIoU": 60.0, "mAcc": 70.0}},
        ],
    }
    out = figures.draw_training_curve(record, tmp_path / "curve.png")
    assert out.read_bytes().startswith(b"\x89PNG")


def test_start_up_benchmark_runs_each_segzoo_command():
    cli_start = load_benchmark("cli_start")
    for name, command in cli_start.COMMANDS.items():
        if name.startswith("segzoo"):
            cli_start.run(command)


@pytest.mark.slow  # the ONNX export alone takes about 20 s
def test_runtime_benchmark_times_every_column_on_the_export_of_a_tiny_input(monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    runtimes = load_benchmark("runtimes")
    monkeypatch.setitem(runtimes.COLUMNS, "eager again", runtimes.eager)  # a column is one entry
    (row,) = runtimes.main(["--entries", "moganet_xt_fpn_ade20k", "--size", "64", "--runs", "1", "--warmup", "0"])
    assert set(row.speedups) | set(row.missing) == set(runtimes.COLUMNS) and row.speedups["eager"] == 1.0
    for column in ("fast", "onnxruntime", "eager again"):
        assert row.speedups[column] > 0 and row.differences[column] < 1e-4
    lines = capsys.readouterr().out.splitlines()
    assert "eager again (speed-up; diff)" in lines[1] and lines[3].startswith("| moganet_xt_fpn_ade20k | 64x64 |")
