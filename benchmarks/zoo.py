"""Speed of every registry entry: eager, the fast path (``segzoo.optimize_for_inference``) and more.

Two resolutions per entry:

- ``512x512``: one forward of the model on a normalized ``1x3x512x512`` tensor (no pre- or post-processing);
- ``test``: ``segzoo.predict`` on one random photo of the entry's dataset's typical size, so the entry's own
  test pipeline runs as its paper tested (resize, whole or slide inference, logits resized back to the photo):
  ADE20K 512x683 (kept at 512x683 by the ``(2048, 512)`` keep-ratio resize), Cityscapes 1024x2048, COCO-Stuff
  480x640 (800x1067 after the shortest-edge resize). The resolution column names the photo.

Modes: ``eager`` (the model ``create_model`` returns, fp32), ``fast`` (``optimize_for_inference``), ``fast+compile``
(the same plus ``torch.compile``), and on a GPU ``bf16`` (fast path, channels_last, bf16 autocast),
``bf16+compile`` (the same plus ``torch.compile``) and ``bf16+cuda-graphs`` (the bf16 forward replayed from a
CUDA graph, :mod:`segzoo.inference.graphs`; at the test resolution ``predict``'s default on a GPU, which the other
rows turn off). Without a GPU the GPU rows are written with the note "needs GPU" (a measured GPU row already in
``--out`` is kept). All modes of one entry and resolution run in one process, interleaved run by run;
``speedup_vs_eager`` is the median over runs of eager fp32 time / mode time. Latency is the median run.
Peak memory: on the CPU the largest resident-set size seen (sampled every 2 ms) during one run of the mode
minus the resident size before it, after ``malloc_trim`` handed freed heap memory back to the system; on CUDA
``max_memory_allocated`` minus the memory allocated before. FLOPs are
counted once per entry and resolution on the eager model with ``torch.utils.flop_counter.FlopCounterMode``
(convolutions and matrix products); ``peak_fraction`` divides the achieved GFLOP/s by the device's peak,
measured at start as the faster of a large sgemm and a large 3x3 convolution (fp32 with PyTorch's default
TF32 settings; the bf16 rows divide by a large bf16 matrix product's). Weights are random.

The markdown table names each device measured and, below it, sets the speed the papers report (RegionProxy's
FPS, EMANet's inference time per image) next to the test-resolution rows measured on a GPU.

    PYTHONPATH=. python benchmarks/zoo.py [--entries 'moganet_*'] [--resolution test|512|both] [--runs 3]
        [--no-compile] [--threads 2] [--out benchmarks/zoo.csv] [--table-only]

Rows measured now replace the rows with the same name, resolution, mode and device in ``--out``; the others
are kept, so a long sweep can run in parts. The markdown table of all rows goes next to it (``.md``).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import statistics
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from measure import PeakMemory, cpu_name, interleaved_seconds, pair_ratios, synchronize
from torch.utils.flop_counter import FlopCounterMode

import segzoo
from segzoo.cards import BENCHMARK_COLUMNS
from segzoo.inference.graphs import capture

COLUMNS = list(BENCHMARK_COLUMNS)  # the layout the model cards read
CPU_MODES = ["eager", "fast", "fast+compile"]
GPU_MODES = ["bf16", "bf16+compile", "bf16+cuda-graphs"]
COMPILE_MODES = ("fast+compile", "bf16+compile")
PEAK_NAMES = {"sgemm": "fp32 sgemm", "conv": "fp32 3x3 conv", "bf16": "bf16 matmul"}
# the speed columns of the papers' tables (``ModelInfo.reported_costs``), shown next to the GPU rows
REPORTED_SPEED = {"FPS": lambda v: f"{v:g} FPS", "inference time (s/im)": lambda v: f"{v:g} s/im"}
# the typical photo size (H, W) of each dataset, fed to the entry's test pipeline
TEST_PHOTOS = {"ADE20K": (512, 683), "Cityscapes": (1024, 2048), "COCO-Stuff54": (480, 640)}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def measured_peak_gflops(device: torch.device) -> dict[str, float]:
    """GFLOP/s of a large sgemm and of a large dense 3x3 convolution (fp32; best of 3), and on CUDA of a
    large bf16 matrix product."""

    def best(fn: Callable[[], None], flops: float) -> float:
        return flops / min(interleaved_seconds({"peak": fn}, runs=3, device=device)["peak"]) / 1e9

    n = 4096 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    x = torch.randn(1, 256, 128, 128, device=device)
    w = torch.randn(256, 256, 3, 3, device=device)
    with torch.inference_mode():
        matmul = best(lambda: torch.mm(a, b), 2.0 * n**3)
        conv = best(lambda: torch.nn.functional.conv2d(x, w, padding=1), 2.0 * 256 * 256 * 9 * 128 * 128)
        peaks = {"sgemm": matmul, "conv": conv}
        if device.type == "cuda":
            n = 8192
            a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
            peaks["bf16"] = best(lambda: torch.mm(a, b), 2.0 * n**3)
    return peaks


def failure_note(err: Exception) -> str:
    return f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}"


def build_runners(
    name: str, resolution: str, device: torch.device, modes: list[str]
) -> tuple[dict, dict[str, str], Callable]:
    """One callable per mode (taking the input; ``None`` where the mode cannot run, with a note saying why)
    and a factory of the input, for ``name`` at ``resolution``."""
    info = segzoo.model_info(name)
    torch.manual_seed(0)
    eager = segzoo.create_model(name).to(device)
    models: dict[str, torch.nn.Module] = {"eager": eager}
    if any(m != "eager" for m in modes):
        models["fast"] = segzoo.optimize_for_inference(eager)
    if "fast+compile" in modes:
        models["fast+compile"] = torch.compile(models["fast"])
    if any(m.startswith("bf16") for m in modes):
        models["bf16"] = segzoo.optimize_for_inference(eager, channels_last=True)
    if "bf16+compile" in modes:
        models["bf16+compile"] = torch.compile(models["bf16"])
    if resolution == "512x512":

        def make_input() -> torch.Tensor:
            return torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)).to(device)

        def call(model: torch.nn.Module, x: torch.Tensor, amp: bool = False) -> torch.Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                return model(x)
    else:
        height, width = TEST_PHOTOS[info.dataset]

        def make_input() -> np.ndarray:
            return np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)

        def call(model: torch.nn.Module, x: np.ndarray, amp: bool = False, graphs: bool = False):
            return segzoo.predict(model, x, amp="bf16" if amp else None, cuda_graphs=graphs)

    runners: dict[str, Callable | None] = {}
    notes = dict.fromkeys(modes, "")
    for mode in modes:
        if mode in ("eager", "fast", "fast+compile"):
            runners[mode] = lambda x, m=models[mode]: call(m, x)
        elif mode in ("bf16", "bf16+compile"):
            runners[mode] = lambda x, m=models[mode]: call(m, x, amp=True)
        elif mode == "bf16+cuda-graphs" and resolution != "512x512":  # predict's own graphs (its default)
            runners[mode] = lambda x, m=models["bf16"]: call(m, x, amp=True, graphs=True)
        elif mode == "bf16+cuda-graphs":
            runners[mode] = None
            try:
                with torch.inference_mode():
                    runners[mode] = capture(lambda x, m=models["bf16"]: call(m, x, amp=True), make_input(), None)
            except Exception as err:  # e.g. a data-dependent graph that synchronizes with the host
                notes[mode] = failure_note(err)
    return runners, notes, make_input


def resolution_label(name: str, resolution: str) -> str:
    """``512x512``, or the size of the photo fed to the entry's test pipeline."""
    if resolution == "512x512":
        return resolution
    return "x".join(map(str, TEST_PHOTOS[segzoo.model_info(name).dataset]))


def measure(
    name: str, resolution: str, device: torch.device, modes: list[str], runs: int, peaks: dict[str, float], threads: int
) -> list[dict]:
    """The rows of ``name`` at ``resolution`` for ``modes``, timed interleaved in this process."""
    base = dict(
        name=name,
        family=name.split("_", 1)[0],
        resolution=resolution_label(name, resolution),
        device=device.type,
        device_name=device_name(device),
        threads=threads,
    )
    fp32_peak = max(peaks["sgemm"], peaks["conv"])
    runners, notes, make_input = build_runners(name, resolution, device, modes)
    x = make_input()
    memory: dict[str, float] = {}
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            runners["eager"](x)
        gflops = counter.get_total_flops() / 1e9
        for mode in modes:  # warm-up (compiles) and peak memory of one run
            if runners[mode] is None:
                continue
            try:
                with PeakMemory(device) as peak:
                    runners[mode](x)
                    synchronize(device)
                memory[mode] = peak.peak_mb
            except Exception as err:  # a mode that cannot run on this entry is reported, not hidden
                notes[mode] = failure_note(err)
                runners[mode] = None
        timed = {mode: partial(runner, x) for mode, runner in runners.items() if runner is not None}
        times = interleaved_seconds(timed, runs, warmup=0, device=device)
    rows = []
    for mode in modes:
        row = {**base, "mode": mode, "note": notes[mode]}
        if times.get(mode):
            peak_gflops = peaks["bf16"] if mode.startswith("bf16") else fp32_peak
            latency = statistics.median(times[mode])
            row.update(
                images_per_s=f"{1 / latency:.4g}",
                latency_ms=f"{1000 * latency:.1f}",
                peak_mem_mb=f"{memory[mode]:.0f}",
                gflops=f"{gflops:.1f}",
                gflop_per_s=f"{gflops / latency:.1f}",
                peak_fraction=f"{gflops / latency / peak_gflops:.3f}",
                speedup_vs_eager=f"{statistics.median(pair_ratios(times['eager'], times[mode])):.3f}",
            )
        rows.append(row)
    return rows


def placeholder_rows(name: str, resolution: str, device: torch.device, skipped: list[str]) -> list[dict]:
    """Rows saying why a mode has no numbers: the ``skipped`` modes on ``device``, and the GPU modes on a CPU."""
    base = dict(name=name, family=name.split("_", 1)[0], resolution=resolution_label(name, resolution))
    rows = [dict(base, mode=m, device=device.type, note="not measured (--no-compile)") for m in skipped]
    if device.type != "cuda":
        rows += [dict(base, mode=m, device="cuda", note="needs GPU") for m in GPU_MODES]
    return rows


def row_key(row: dict) -> tuple[str, str, str, str]:
    return row["name"], row["resolution"], row["mode"], row["device"]


def merge_rows(rows: list[dict], measured: list[dict], placeholders: list[dict]) -> tuple[list[dict], list[dict]]:
    """``rows`` with the ``measured`` rows in place of those with the same key, and each placeholder added
    where no row has its key yet (a GPU row measured elsewhere stays); also returns the rows added."""
    old = {row_key(r) for r in rows}
    new = measured + [r for r in placeholders if row_key(r) not in old]
    keys = {row_key(r) for r in new}
    return [r for r in rows if row_key(r) not in keys] + new, new


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def machine_lines(md_path: Path) -> dict[str, str]:
    """The per-device lines (``- cpu: ...``) of the table's header in ``md_path``, by device type."""
    if not md_path.exists():
        return {}
    lines = {}
    for line in md_path.read_text().splitlines():
        if line.startswith("|"):
            break
        device, sep, _ = line.removeprefix("- ").partition(": ")
        if line.startswith("- ") and sep and device in ("cpu", "cuda"):
            lines[device] = line
    return lines


def reported_speed_table(rows: list[dict]) -> list[str]:
    """The papers' speed columns next to the speed measured at the test resolution on a GPU."""
    measured = {(r["name"], r["mode"]): r for r in rows if r["device"] == "cuda" and r["resolution"] != "512x512"}
    modes = ["eager", "fast", "bf16", "bf16+compile"]
    lines = [
        "The papers' speed columns next to the test-resolution rows on a GPU (images/s, and seconds per image). "
        "The source tables do not name the GPU behind their numbers. Modes of one entry measured in different "
        "runs differ also by the run: at batch 1 the GPU mostly waits on the host.",
        "",
        "| name | reported | measured on | " + " | ".join(modes) + " |",
        "|" + "---|" * (3 + len(modes)),
    ]
    for name in segzoo.list_models():
        costs = segzoo.model_info(name).reported_costs
        reported = [fmt(costs[key]) for key, fmt in REPORTED_SPEED.items() if key in costs]
        if not reported:
            continue
        cells = []
        for mode in modes:
            row = measured.get((name, mode), {})
            ips = row.get("images_per_s")
            cells.append(f"{float(ips):.3g} ({1 / float(ips):.3g} s/im)" if ips else row.get("note") or "needs GPU")
        device = next((measured[(name, m)].get("device_name") for m in modes if (name, m) in measured), "") or "-"
        lines.append(f"| {name} | {', '.join(reported)} | {device} | " + " | ".join(cells) + " |")
    return lines


def machine_header(machines: dict[str, str]) -> str:
    return "\n".join(["Measured on:", ""] + [machines[d] for d in ("cpu", "cuda") if d in machines])


def write_outputs(path: Path, rows: list[dict], header: str) -> None:
    rows = sorted(
        rows, key=lambda r: (r["name"], r["resolution"], r["device"], (CPU_MODES + GPU_MODES).index(r["mode"]))
    )
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows({c: row.get(c, "") for c in COLUMNS} for row in rows)
    shown = [c for c in COLUMNS if c not in ("family", "device_name", "threads", "gflops")]
    lines = [header, "", "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in shown) + " |" for row in rows]
    lines += [""] + reported_speed_table(rows)
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", default="*", help="fnmatch pattern of registry names (default: all)")
    parser.add_argument("--resolution", choices=["test", "512", "both"], default="both")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per mode, after one warm-up")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled rows (fast+compile, bf16+compile)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("zoo.csv"))
    parser.add_argument("--table-only", action="store_true", help="rewrite the markdown table from --out, no runs")
    args = parser.parse_args()
    md_path = args.out.with_suffix(".md")
    if args.table_only:
        write_outputs(args.out, read_rows(args.out), machine_header(machine_lines(md_path)))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    device = torch.device(args.device)
    names = [n for n in segzoo.list_models() if fnmatch.fnmatchcase(n, args.entries)]
    resolutions = {"512": ["512x512"], "test": ["test"], "both": ["512x512", "test"]}[args.resolution]
    modes = CPU_MODES + (GPU_MODES if device.type == "cuda" else [])
    skipped = [m for m in modes if args.no_compile and m in COMPILE_MODES]
    modes = [m for m in modes if m not in skipped]
    peaks = measured_peak_gflops(device)
    machines = machine_lines(md_path)
    machines[device.type] = (
        f"- {device.type}: {device_name(device)}, torch {torch.__version__}, {threads} CPU threads; measured peak "
        + ", ".join(f"{value:.0f} GFLOP/s {PEAK_NAMES[key]}" for key, value in peaks.items())
        + f"; median of {args.runs} interleaved runs after one warm-up"
    )
    print(machines[device.type], flush=True)
    rows = read_rows(args.out)
    for name in names:
        for resolution in resolutions:
            measured = measure(name, resolution, device, modes, args.runs, peaks, threads)
            rows, new = merge_rows(rows, measured, placeholder_rows(name, resolution, device, skipped))
            for r in new:
                print(",".join(str(r.get(c, "")) for c in COLUMNS), flush=True)
            write_outputs(args.out, rows, machine_header(machines))


if __name__ == "__main__":
    main()
