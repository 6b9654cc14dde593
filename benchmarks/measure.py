"""Timing and peak memory, as every benchmark script here measures them.

Timing: the variants compared (eager and fast, two memory formats, a baseline and segzoo) run interleaved in
one process, each once per round, so that load from other processes on a shared machine hits them alike;
compare them by :func:`pair_ratios`, the ratio within each round. Times are wall-clock seconds by default (the
process's CPU time with ``clock=time.process_time``), the GPU synchronized before and after each run.

Peak memory: ``segzoo.training.run_log.peak_memory_mb`` (the training loop's, which the scripts use) is the peak
so far of the whole process (run the work in a fresh process with :func:`run_fresh` to make it the work's own);
:class:`PeakMemory` is the growth during one block.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

_LIBC = ctypes.CDLL(ctypes.util.find_library("c"))


def cpu_name() -> str:
    """The CPU's model name as ``/proc/cpuinfo`` gives it (``platform`` where there is none), for the record of
    what a measurement ran on."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def synchronize(device: torch.device | str | None) -> None:
    """Wait for the work queued on ``device`` (a no-op unless it is a GPU)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_seconds(
    runners: Mapping[str, Callable[[], object]],
    runs: int,
    warmup: int = 1,
    device: torch.device | str | None = None,
    around: Callable[[str], AbstractContextManager] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds of each runner's runs: ``warmup`` untimed rounds, then ``runs`` timed ones, every runner once per
    round in the mapping's order. ``around(name)``, where given, wraps each run outside the timed span (setting
    a variant up, or watching its memory). ``clock`` is wall-clock time unless given (``time.process_time``:
    the process's CPU time, steadier on a loaded machine when the work runs on one thread)."""
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for round_index in range(warmup + runs):
        for name, run in runners.items():
            with around(name) if around else contextlib.nullcontext():
                synchronize(device)
                start = clock()
                run()
                synchronize(device)
                elapsed = clock() - start
            if round_index >= warmup:
                seconds[name].append(elapsed)
    return seconds


def pair_ratios(numerators: list[float], denominators: list[float]) -> list[float]:
    """The ratio of two variants' times round by round (interleaved rounds saw the same load)."""
    return [a / b for a, b in zip(numerators, denominators)]


def run_fresh(script: str, *args: str) -> Any:
    """The JSON that ``script`` run with ``args`` in a new Python process prints last: a process of its own, so
    that the peak memory it reports is its work's. On Linux the new process's ``ru_maxrss`` starts at this
    process's peak RSS (it is spawned by vfork and exec): call it before this process has grown."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{os.path.basename(script)} {' '.join(args)} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


class PeakMemory:
    """Peak memory of the work inside the ``with`` block over what was in use when it started (MB).

    On CUDA ``max_memory_allocated``; on the CPU the resident set size sampled every 2 ms, after ``malloc_trim``
    handed freed heap memory back so that the block's growth shows in it.
    """

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
        _LIBC.malloc_trim(0)
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
