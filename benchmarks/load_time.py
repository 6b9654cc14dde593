"""Time to get a ready model: random initialization vs. create_model(pretrained=True) from a warm cache, and
vs. create_model(checkpoint_path=...) from the user's own copy of the file (read into memory, not mapped).

Checkpoints are synthetic (random tensors in the published mmseg layout, the
size of the real files), served from a local mirror folder into a temporary
cache, so the script needs no network. All timings are medians over the same
number of interleaved runs in one process (``benchmarks/measure.py``).

    python benchmarks/load_time.py [--runs 7] [--models moganet_xt_fpn_ade20k moganet_l_upernet_ade20k] [--cpu-time]

``--cpu-time`` times the process's CPU time on one thread instead of wall-clock time with torch's threads, for a
machine other work is loading.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from measure import interleaved_seconds

import segzoo
from segzoo.families import build_architecture


def synthetic_checkpoint(name: str, folder: Path) -> Path:
    info = segzoo.model_info(name)
    model = build_architecture(info.architecture, **info.arch_args, num_classes=info.num_classes)
    path = folder / info.weights[0].filename
    torch.save({"state_dict": model.state_dict(), "meta": {}}, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--models", nargs="+", default=["moganet_xt_fpn_ade20k", "moganet_l_upernet_ade20k"])
    parser.add_argument("--cpu-time", action="store_true", help="CPU time on one thread, not wall-clock time")
    args = parser.parse_args()
    if args.cpu_time:
        torch.set_num_threads(1)
    logging.disable(logging.WARNING)  # the trust-on-first-use notice of the synthetic files
    with tempfile.TemporaryDirectory() as tmp:
        mirror, cache = Path(tmp, "mirror"), Path(tmp, "cache")
        mirror.mkdir()
        os.environ.update(SEGZOO_MIRROR=str(mirror), SEGZOO_CACHE=str(cache))
        machine = platform.processor() or platform.machine()
        clock = "process CPU time" if args.cpu_time else "wall-clock time"
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {machine}, {clock}")
        print(
            "| model | params | file (MB) | random init (s) | pretrained from cache (s) | speed-up | local file (s) |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name in args.models:
            path = synthetic_checkpoint(name, mirror)
            segzoo.create_model(name, pretrained=True, progress=False)  # warm the cache
            seconds = interleaved_seconds(
                {
                    "random init": partial(segzoo.create_model, name),
                    "pretrained": partial(segzoo.create_model, name, pretrained=True, progress=False),
                    "local file": partial(segzoo.create_model, name, checkpoint_path=path),
                },
                args.runs,
                warmup=0,
                clock=time.process_time if args.cpu_time else time.perf_counter,
            )
            random_init, pretrained, local_file = (statistics.median(times) for times in seconds.values())
            params = segzoo.model_info(name).num_params
            print(
                f"| {name} | {params / 1e6:.1f}M | {path.stat().st_size / 1e6:.0f} | {random_init:.3f} "
                f"| {pretrained:.3f} | {random_init / pretrained:.1f}x | {local_file:.3f} |"
            )


if __name__ == "__main__":
    main()
