"""Training speed and memory, on the CPU or a GPU, and the learning curve of a short fine-tune.

Three measurements, one subcommand each:

- ``step``: one optimizer step of MogaNet-S FPN at its recipe's crop (forward, loss, backward and optimizer step
  on a batch of the recipe's images per GPU, ``--batch`` to change it), random weights and synthetic data.
  Prints images per second (median over ``--runs`` steps after one warm-up) and peak memory: the process's peak
  RSS on the CPU, ``torch.cuda.max_memory_allocated`` on CUDA. On the CPU it measures fp32 eager; with a GPU it
  measures fp32 and bf16 autocast + channels_last, interleaved in one process, and prints their ratio.
- ``processes``: the training loop (``segzoo train``, launched by ``torch.distributed.run``) on a generated
  3-class dataset, one process with 2 accumulation steps against 2 processes with one, the same images per
  step; the CPU threads are split between the processes (``OMP_NUM_THREADS``). Prints the loop's images/s
  (median of its logged windows after the first) and each process's peak RSS; writes them to
  ``benchmarks/train_processes.json``.
- ``curve``: a short fine-tune of ``moganet_xt_fpn_ade20k`` on a generated 3-class dataset, from the entry's
  published weights, its ImageNet backbone or random weights (``--start``), with evaluation every
  ``--eval-interval`` iterations; writes the run's log to ``benchmarks/train_curve.json``, which
  ``benchmarks/figures.py`` (``make docs``) draws as ``docs/train_curve.png``.

    python benchmarks/train.py step [--model moganet_s_fpn_ade20k] [--batch N] [--runs 3] [--device cuda]
    python benchmarks/train.py processes [--iters 30] [--crop 128]
    python benchmarks/train.py curve [--iters 300] [--start published|imagenet|random]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from measure import cpu_name, interleaved_seconds
from PIL import Image

import segzoo
from segzoo.cli import main as segzoo_main
from segzoo.training import build_optimizer, compute_losses, get_recipe
from segzoo.training.run_log import LOG_NAME, peak_memory_mb

HERE = Path(__file__).resolve().parent
PROCESSES_JSON = HERE / "train_processes.json"
CURVE_JSON = HERE / "train_curve.json"
SHAPE_CLASSES = ("background", "disc", "square")
SHAPE_COLOURS = {1: np.array([190, 60, 60]), 2: np.array([60, 70, 190])}  # mean colour of each shape class
PEAK_NAME = "peak_rss_rank{rank}.json"


class Variant:
    """A model, its optimizer and a batch, trained in one precision and memory format."""

    def __init__(self, model_name: str, batch: int, device: torch.device, amp: bool, channels_last: bool):
        self.device, self.amp = device, amp
        self.recipe = get_recipe(model_name)
        self.model = segzoo.create_model(model_name).train().to(device)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=fmt)
        self.optimizer = build_optimizer(self.model, self.recipe)
        h, w = self.recipe.crop_size
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(batch, 3, h, w, generator=generator).to(device, memory_format=fmt)
        classes = self.model.num_classes
        self.labels = torch.randint(0, classes, (batch, h, w), generator=generator).to(device)
        self.peak_mb = 0.0

    def step(self) -> None:
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()
        with autocast:
            loss = compute_losses(self.model, self.images, self.labels, self.recipe)["loss"]
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @contextlib.contextmanager
    def watch_memory(self) -> Iterator[None]:
        """Keeps the largest peak memory of one step (on CUDA the peak since the step began)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        yield
        self.peak_mb = max(self.peak_mb, peak_memory_mb(self.device))


def machine() -> dict[str, object]:
    """What the numbers were measured on, and how loaded it was when the measurement began."""
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "segzoo": segzoo.__version__,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }


def make_shapes_dataset(root: Path, train: int, val: int, size: int = 128, seed: int = 0) -> Path:
    """A ``custom:`` dataset of ``size`` x ``size`` images: a noisy grey background (class 0) with one to three
    discs (class 1, reddish) and squares (class 2, bluish) of random size and position, each shape's colour
    jittered about its class's. Returns ``root``."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    for split, count in (("train", train), ("val", val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = rng.normal(rng.uniform(90, 160), 20, (size, size, 3))
            label = np.zeros((size, size), np.uint8)
            for _ in range(rng.integers(1, 4)):
                cls = int(rng.integers(1, 3))
                cy, cx = rng.integers(size // 8, size - size // 8, 2)
                radius = rng.integers(size // 12, size // 5)
                if cls == 1:
                    inside = (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2
                else:
                    inside = (abs(rows - cy) <= radius) & (abs(cols - cx) <= radius)
                colour = SHAPE_COLOURS[cls] + rng.uniform(-50, 50, 3)
                image[inside] = rng.normal(colour, 20, (int(inside.sum()), 3))
                label[inside] = cls
            stem = f"{split}_{i:04d}"
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "images" / split / f"{stem}.png")
            Image.fromarray(label).save(root / "labels" / split / f"{stem}.png")
    return root


def read_log(work_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (work_dir / LOG_NAME).read_text().splitlines()]


def train_command(entry: str, data: Path, work_dir: Path, options: Sequence[str]) -> list[str]:
    """``segzoo train`` as this script's worker runs it, with the options every measurement here shares."""
    return [
        entry,
        "--data",
        f"custom:{data}",
        "--num-classes",
        str(len(SHAPE_CLASSES)),
        "--work-dir",
        str(work_dir),
        "--device",
        "cpu",
        "--workers",
        "0",
        "--quiet",
        *options,
    ]


def launch(processes: int, threads: int, args: Sequence[str]) -> float:
    """Run this script's worker (``segzoo train`` with ``args``) on ``processes`` processes of ``threads`` CPU
    threads each through ``torch.distributed.run``; returns the wall time in seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(processes),
        __file__,
        "worker",
        *args,
    ]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"training on {processes} process(es) failed:\n{done.stderr[-4000:]}")
    return time.perf_counter() - start


def worker(argv: Sequence[str]) -> None:
    """One process of a launch: ``segzoo train``, then its peak RSS into the work dir (rank 0 logs only its own)."""
    if segzoo_main(["train", *argv]):
        sys.exit(1)
    work_dir = Path(argv[argv.index("--work-dir") + 1])
    rank = int(os.environ.get("RANK", "0"))
    (work_dir / PEAK_NAME.format(rank=rank)).write_text(json.dumps({"peak_rss_mb": peak_memory_mb("cpu")}))


def measure_processes(args: argparse.Namespace) -> None:
    cores = os.cpu_count() or 1
    entry, crop, batch = args.model, args.crop, args.batch
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = make_shapes_dataset(Path(tmp) / "shapes", train=16, val=0, size=2 * crop)
        for processes in (1, 2):
            threads = max(cores // processes, 1)
            work_dir = Path(tmp) / f"p{processes}"
            options = [
                "--from-scratch",
                "--no-imagenet",
                "--iters",
                str(args.iters),
                "--crop",
                str(crop),
                str(crop),
                "--batch-size",
                str(batch),
                "--accumulation",
                str(2 // processes),
                "--log-interval",
                str(args.log_interval),
                "--eval-interval",
                "0",
                "--checkpoint-interval",
                str(args.iters),
            ]
            load = round(os.getloadavg()[0], 2)
            wall = launch(processes, threads, train_command(entry, data, work_dir, options))
            windows = [r["images_per_s"] for r in read_log(work_dir) if "images_per_s" in r]
            peaks = [json.loads((work_dir / PEAK_NAME.format(rank=r)).read_text()) for r in range(processes)]
            rows.append(
                {
                    "processes": processes,
                    "threads_per_process": threads,
                    "accumulation": 2 // processes,
                    "images_per_step": 2 * batch,
                    "images_per_s": round(statistics.median(windows[1:]), 3),
                    "images_per_s_by_window": windows,
                    "peak_rss_mb_per_process": [round(p["peak_rss_mb"]) for p in peaks],
                    "wall_s": round(wall, 1),
                    "load_average_1min": load,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    record = {
        "command": "python benchmarks/train.py processes " + " ".join(sys.argv[2:]),
        "machine": machine(),
        "entry": entry,
        "crop": crop,
        "iters": args.iters,
        "rows": rows,
    }
    PROCESSES_JSON.write_text(json.dumps(record, indent=1) + "\n")
    print(
        "| processes x threads | accumulation | images/step | images/s | peak RSS per process (MB) | wall (s) | load |"
    )
    print("|---|---:|---:|---:|---|---:|---:|")
    for r in rows:
        peaks = " + ".join(str(p) for p in r["peak_rss_mb_per_process"])
        print(
            f"| {r['processes']} x {r['threads_per_process']} | {r['accumulation']} | {r['images_per_step']} | "
            f"{r['images_per_s']:.2f} | {peaks} | {r['wall_s']:.0f} | {r['load_average_1min']} |"
        )
    print(f"wrote {PROCESSES_JSON}")


def record_curve(args: argparse.Namespace) -> None:
    start = {"published": [], "imagenet": ["--from-scratch"], "random": ["--from-scratch", "--no-imagenet"]}
    options = [
        *start[args.start],
        "--iters",
        str(args.iters),
        "--crop",
        str(args.crop),
        str(args.crop),
        "--batch-size",
        str(args.batch),
        "--accumulation",
        "1",
        "--eval-interval",
        str(args.eval_interval),
        "--checkpoint-interval",
        str(args.iters),
        "--log-interval",
        str(args.log_interval),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        data = make_shapes_dataset(Path(tmp) / "shapes", train=args.train_images, val=args.val_images)
        work_dir = Path(tmp) / "run"
        wall = launch(1, args.threads, train_command(args.model, data, work_dir, options))
        records = read_log(work_dir)
    record = {
        "command": "python benchmarks/train.py curve " + " ".join(sys.argv[2:]),
        "machine": machine(),
        "entry": args.model,
        "start": args.start,
        "threads": args.threads,
        "classes": list(SHAPE_CLASSES),
        "train_images": args.train_images,
        "val_images": args.val_images,
        "wall_s": round(wall),
        "log": records,
    }
    CURVE_JSON.write_text(json.dumps(record, indent=1) + "\n")
    evals = [(r["iter"], r["eval"]) for r in records if "eval" in r]
    for iteration, scalars in evals:
        print(f"iteration {iteration}: " + ", ".join(f"{k} {v:.2f}" for k, v in scalars.items()))
    print(f"{wall:.0f} s; wrote {CURVE_JSON}")


def measure_step(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    recipe = get_recipe(args.model)
    batch = args.batch or recipe.images_per_gpu
    variants = [("fp32", False, False)]
    if device.type == "cuda":
        variants.append(("bf16 + channels_last", True, True))
    else:
        print("no GPU: fp32 eager only (bf16 autocast + channels_last needs a GPU)")
    runs = {name: Variant(args.model, batch, device, amp, cl) for name, amp, cl in variants}
    seconds = interleaved_seconds(
        {name: run.step for name, run in runs.items()},
        args.runs,
        device=device,
        around=lambda name: runs[name].watch_memory(),
    )
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(
        f"{args.model}, crop {recipe.crop_size[0]}x{recipe.crop_size[1]}, batch {batch}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {where}; median of {args.runs} steps after 1 warm-up"
    )
    print("| variant | step (s) | images/s | peak memory (MB) |")
    print("|---|---:|---:|---:|")
    base = statistics.median(seconds["fp32"])
    for name, run in runs.items():
        step = statistics.median(seconds[name])
        ratio = "" if name == "fp32" else f" ({base / step:.2f}x)"
        print(f"| {name} | {step:.3f} | {batch / step:.2f}{ratio} | {run.peak_mb:.0f} |")
    print("peak memory: " + ("the process's peak RSS" if device.type == "cpu" else "max_memory_allocated per step"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    step = commands.add_parser("step", help="one optimizer step at the recipe's crop")
    step.add_argument("--model", default="moganet_s_fpn_ade20k")
    step.add_argument("--batch", type=int, help="images per step (default: the recipe's images per GPU)")
    step.add_argument("--runs", type=int, default=3)
    step.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    step.set_defaults(run=measure_step)
    procs = commands.add_parser("processes", help="the CPU training loop on 1 process against 2")
    procs.add_argument("--model", default="moganet_xt_fpn_ade20k")
    procs.add_argument("--iters", type=int, default=30)
    procs.add_argument("--log-interval", type=int, default=5)
    procs.add_argument("--crop", type=int, default=128, help="square training crop (images are twice its side)")
    procs.add_argument("--batch", type=int, default=2, help="images per process and micro-step")
    procs.set_defaults(run=measure_processes)
    curve = commands.add_parser("curve", help="the learning curve of a short fine-tune on generated shapes")
    curve.add_argument("--model", default="moganet_xt_fpn_ade20k")
    curve.add_argument("--start", choices=["published", "imagenet", "random"], default="published")
    curve.add_argument("--iters", type=int, default=300)
    curve.add_argument("--eval-interval", type=int, default=25)
    curve.add_argument("--log-interval", type=int, default=5)
    curve.add_argument("--crop", type=int, default=64)
    curve.add_argument("--batch", type=int, default=4)
    curve.add_argument("--train-images", type=int, default=64)
    curve.add_argument("--val-images", type=int, default=8)
    curve.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads (default: all)")
    curve.set_defaults(run=record_curve)
    return parser


def main() -> None:
    if sys.argv[1:2] == ["worker"]:
        worker(sys.argv[2:])
        return
    args = build_parser().parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
