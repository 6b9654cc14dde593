"""Speed of every registry entry: eager, the fast path (``segzoo.optimize_for_inference``) and more.

Two resolutions per entry:

- ``512x512``: one forward of the model on a normalized ``1x3x512x512`` tensor (no pre- or post-processing);
- ``test``: ``segzoo.predict`` on one random photo of the entry's dataset's typical size, so the entry's own
  test pipeline runs as its paper tested (resize, whole or slide inference, logits resized back to the photo):
  ADE20K 512x683 (kept at 512x683 by the ``(2048, 512)`` keep-ratio resize), Cityscapes 1024x2048, COCO-Stuff
  480x640 (800x1067 after the shortest-edge resize). The resolution column names the photo.

Modes: ``eager`` (the model ``create_model`` returns), ``fast`` (``optimize_for_inference``), ``fast+compile``
(the same plus ``torch.compile``), and on a GPU ``bf16`` (fast path, channels_last, bf16 autocast) and
``bf16+cuda-graphs`` (the bf16 forward captured in a CUDA graph). Without a GPU the GPU rows are written
with the note "needs GPU". All modes of one entry and resolution run in one process, interleaved run by run;
``speedup_vs_eager`` is the median over runs of eager time / mode time. Latency is the median run.
Peak memory: on the CPU the largest resident-set size seen (sampled every 2 ms) during one run of the mode
minus the resident size before it, after ``malloc_trim`` handed freed heap memory back to the system; on CUDA
``max_memory_allocated`` minus the memory allocated before. FLOPs are
counted once per entry and resolution on the eager model with ``torch.utils.flop_counter.FlopCounterMode``
(convolutions and matrix products); ``peak_fraction`` divides the achieved GFLOP/s by the device's peak,
measured at start as the faster of a large sgemm and a large 3x3 convolution. Weights are random.

    PYTHONPATH=. python benchmarks/zoo.py [--entries 'moganet_*'] [--resolution test|512|both] [--runs 3]
        [--no-compile] [--threads 2] [--out benchmarks/zoo.csv] [--table-only]

Rows measured now replace the rows with the same name, resolution, mode and device in ``--out``; the others
are kept, so a long sweep can run in parts. The markdown table of all rows goes next to it (``.md``).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import ctypes.util
import fnmatch
import gc
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import segzoo

COLUMNS = [
    "name", "family", "resolution", "mode", "device", "threads", "images_per_s", "latency_ms", "peak_mem_mb",
    "gflops", "gflop_per_s", "peak_fraction", "speedup_vs_eager", "note",
]
CPU_MODES = ["eager", "fast", "fast+compile"]
GPU_MODES = ["bf16", "bf16+cuda-graphs"]
# the typical photo size (H, W) of each dataset, fed to the entry's test pipeline
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"))
TEST_PHOTOS = {"ADE20K": (512, 683), "Cityscapes": (1024, 2048), "COCO-Stuff54": (480, 640)}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return cpu


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measured_peak_gflops(device: torch.device) -> dict[str, float]:
    """GFLOP/s of a large sgemm and of a large dense 3x3 convolution (fp32; best of 3)."""
    def best(fn: Callable[[], None], flops: float) -> float:
        fn()
        times = []
        for _ in range(3):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times.append(time.perf_counter() - start)
        return flops / min(times) / 1e9

    n = 4096 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    x = torch.randn(1, 256, 128, 128, device=device)
    w = torch.randn(256, 256, 3, 3, device=device)
    with torch.inference_mode():
        matmul = best(lambda: torch.mm(a, b), 2.0 * n**3)
        conv = best(lambda: torch.nn.functional.conv2d(x, w, padding=1), 2.0 * 256 * 256 * 9 * 128 * 128)
    return {"sgemm": matmul, "conv": conv}


class PeakMemory:
    """Peak memory of the work inside the ``with`` block over what was in use when it started (MB)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb = 0.0

    @staticmethod
    def _rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        gc.collect()
        _LIBC.malloc_trim(0)  # hand freed heap memory back, so that the run's growth shows in the resident size
        self._start = self._rss_mb()
        self._highest = self._start
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.wait(0.002):
                self._highest = max(self._highest, self._rss_mb())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._start) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self._highest, self._rss_mb()) - self._start


def cuda_graph_runner(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable:
    """``forward`` on ``x``'s shape captured once in a CUDA graph; the runner copies its input in and replays."""
    static_input = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm-up on a side stream, as capture requires
            forward(static_input)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_output = forward(static_input)

    def run(inputs: torch.Tensor) -> torch.Tensor:
        static_input.copy_(inputs)
        graph.replay()
        return static_output

    return run


def build_runners(name: str, resolution: str, device: torch.device, modes: list[str]) -> tuple[dict, Callable]:
    """One callable per mode (taking the input) and a factory of the input, for ``name`` at ``resolution``."""
    info = segzoo.model_info(name)
    torch.manual_seed(0)
    eager = segzoo.create_model(name).to(device)
    models: dict[str, torch.nn.Module] = {"eager": eager}
    if any(m != "eager" for m in modes):
        models["fast"] = segzoo.optimize_for_inference(eager)
    if "fast+compile" in modes:
        models["fast+compile"] = torch.compile(models["fast"])
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

        def call(model: torch.nn.Module, x: np.ndarray, amp: bool = False):
            return segzoo.predict(model, x, amp="bf16" if amp else None)

    runners: dict[str, Callable] = {}
    for mode in modes:
        if mode in ("eager", "fast", "fast+compile"):
            runners[mode] = lambda x, m=models[mode]: call(m, x)
        elif mode == "bf16":
            channels_last = segzoo.optimize_for_inference(eager, channels_last=True)
            runners[mode] = lambda x, m=channels_last: call(m, x, amp=True)
        elif mode == "bf16+cuda-graphs":
            channels_last = segzoo.optimize_for_inference(eager, channels_last=True)
            if resolution == "512x512":
                with torch.inference_mode():
                    runners[mode] = cuda_graph_runner(lambda x, m=channels_last: call(m, x, amp=True), make_input())
            else:
                runners[mode] = None  # predict's pre/post-processing runs on the host: not graph-capturable
    return runners, make_input


def measure(name: str, resolution: str, device: torch.device, modes: list[str], runs: int,
            peak_gflops: float, threads: int) -> list[dict]:
    """The rows of ``name`` at ``resolution`` for ``modes``, timed interleaved in this process."""
    info = segzoo.model_info(name)
    family = name.split("_", 1)[0]
    label = resolution if resolution == "512x512" else "x".join(map(str, TEST_PHOTOS[info.dataset]))
    base = dict(name=name, family=family, resolution=label, device=device.type, threads=threads)
    runners, make_input = build_runners(name, resolution, device, modes)
    x = make_input()
    notes: dict[str, str] = {m: "" for m in modes}
    times: dict[str, list[float]] = {m: [] for m in modes}
    memory: dict[str, float] = {}
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            runners["eager"](x)
        gflops = counter.get_total_flops() / 1e9
        for mode in modes:  # warm-up (compiles) and peak memory of one run
            if runners[mode] is None:
                notes[mode] = "CUDA graphs cover the 512x512 forward only"
                continue
            try:
                with PeakMemory(device) as peak:
                    runners[mode](x)
                    synchronize(device)
                memory[mode] = peak.peak_mb
            except Exception as err:  # a mode that cannot run on this entry is reported, not hidden
                notes[mode] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
                runners[mode] = None
        for _ in range(runs):
            for mode in modes:
                if runners[mode] is None:
                    continue
                synchronize(device)
                start = time.perf_counter()
                runners[mode](x)
                synchronize(device)
                times[mode].append(time.perf_counter() - start)
    rows = []
    for mode in modes:
        row = {**base, "mode": mode, "note": notes[mode]}
        if times[mode]:
            latency = statistics.median(times[mode])
            ratios = [e / t for e, t in zip(times["eager"], times[mode])]
            row.update(
                images_per_s=f"{1 / latency:.4g}", latency_ms=f"{1000 * latency:.1f}",
                peak_mem_mb=f"{memory[mode]:.0f}", gflops=f"{gflops:.1f}", gflop_per_s=f"{gflops / latency:.1f}",
                peak_fraction=f"{gflops / latency / peak_gflops:.3f}",
                speedup_vs_eager=f"{statistics.median(ratios):.3f}",
            )
        rows.append(row)
    return rows


def gpu_rows(name: str, resolution: str, threads: int) -> list[dict]:
    info = segzoo.model_info(name)
    label = resolution if resolution == "512x512" else "x".join(map(str, TEST_PHOTOS[info.dataset]))
    return [
        dict(name=name, family=name.split("_", 1)[0], resolution=label, mode=mode, device="cuda", threads=threads,
             note="needs GPU")
        for mode in GPU_MODES
    ]


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_outputs(path: Path, rows: list[dict], header: str) -> None:
    rows = sorted(rows, key=lambda r: (r["name"], r["resolution"], r["device"],
                                       (CPU_MODES + GPU_MODES).index(r["mode"])))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows({c: row.get(c, "") for c in COLUMNS} for row in rows)
    shown = [c for c in COLUMNS if c not in ("family", "threads", "gflops")]
    lines = [header, "", "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in shown) + " |" for row in rows]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", default="*", help="fnmatch pattern of registry names (default: all)")
    parser.add_argument("--resolution", choices=["test", "512", "both"], default="both")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per mode, after one warm-up")
    parser.add_argument("--no-compile", action="store_true", help="skip the fast+compile rows")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("zoo.csv"))
    parser.add_argument("--table-only", action="store_true", help="rewrite the markdown table from --out, no runs")
    args = parser.parse_args()
    if args.table_only:
        write_outputs(args.out, read_rows(args.out), f"Rows of {args.out.name}.")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    device = torch.device(args.device)
    names = [n for n in segzoo.list_models() if fnmatch.fnmatchcase(n, args.entries)]
    resolutions = {"512": ["512x512"], "test": ["test"], "both": ["512x512", "test"]}[args.resolution]
    modes = [m for m in CPU_MODES if not (args.no_compile and m == "fast+compile")]
    if device.type == "cuda":
        modes += GPU_MODES
    peaks = measured_peak_gflops(device)
    peak = max(peaks.values())
    header = (f"torch {torch.__version__}, {device.type} ({device_name(device)}), {threads} threads; measured peak "
              f"{peaks['sgemm']:.0f} GFLOP/s sgemm, {peaks['conv']:.0f} GFLOP/s 3x3 conv; median of {args.runs} "
              f"interleaved runs after one warm-up")
    print(header, flush=True)
    rows = read_rows(args.out)
    for name in names:
        for resolution in resolutions:
            new = measure(name, resolution, device, modes, args.runs, peak, threads)
            if device.type != "cuda":
                new += gpu_rows(name, resolution, threads)
            old_keys = {(r["name"], r["resolution"], r["mode"], r["device"]) for r in rows}
            if args.no_compile and (name, new[0]["resolution"], "fast+compile", device.type) not in old_keys:
                new.append({**new[0], **{c: "" for c in COLUMNS[6:13]}, "mode": "fast+compile",
                            "note": "not measured (--no-compile)"})
            keys = {(r["name"], r["resolution"], r["mode"], r["device"]) for r in new}
            rows = [r for r in rows if (r["name"], r["resolution"], r["mode"], r["device"]) not in keys] + new
            for r in new:
                print(",".join(str(r.get(c, "")) for c in COLUMNS), flush=True)
            write_outputs(args.out, rows, header)


if __name__ == "__main__":
    main()
