"""Throughput and peak memory of ``segzoo.predict`` for MogaNet-S UperNet.

Configurations: 512x512 whole-image inference and a 512x2048 image with
sliding-window inference (512x512 windows, stride 341). On CUDA also bf16
autocast, channels_last and ``torch.compile``. Each configuration runs in a
fresh process so that its peak memory is its own (peak RSS on the CPU,
``torch.cuda.max_memory_allocated`` on a GPU). Weights are random: speed does
not depend on them.

    python benchmarks/inference.py [--device cuda] [--runs 3]
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

MODEL = "moganet_s_upernet_ade20k"
SHAPES = {"whole": (512, 512), "slide": (512, 2048)}


def run_one(config: dict) -> dict:
    import segzoo

    torch.manual_seed(0)
    model = segzoo.create_model(MODEL).to(config["device"])
    if config["compile"]:
        model = torch.compile(model)  # attribute access (info, num_classes) falls through to the model
    image = np.random.default_rng(0).integers(0, 255, (*SHAPES[config["mode"]], 3), dtype=np.uint8)
    kwargs = dict(mode=config["mode"], amp=config["amp"], channels_last=config["channels_last"])

    def once() -> float:
        start = time.perf_counter()
        segzoo.predict(model, image, **kwargs)
        if config["device"].startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(config["warmup"]):
        once()
    if config["device"].startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds = statistics.median(once() for _ in range(config["runs"]))
    if config["device"].startswith("cuda"):
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {**config, "images_per_s": 1 / seconds, "peak_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a single configuration, as JSON (internal)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    variants = [dict(amp=None, channels_last=False, compile=False)]
    if args.device.startswith("cuda"):
        variants += [dict(amp="bf16", channels_last=False, compile=False),
                     dict(amp=None, channels_last=True, compile=False),
                     dict(amp="bf16", channels_last=True, compile=False),
                     dict(amp=None, channels_last=False, compile=True)]
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine()
    print(f"{MODEL}, torch {torch.__version__}, {args.device} ({name}), {torch.get_num_threads()} CPU threads, "
          f"median of {args.runs} runs after {args.warmup} warm-up")
    print("| input | mode | amp | channels_last | compile | images/s | peak memory (MB) |")
    print("|---|---|---|---|---|---:|---:|")
    for mode in SHAPES:
        for variant in variants:
            config = dict(mode=mode, device=args.device, runs=args.runs, warmup=args.warmup, **variant)
            out = subprocess.run([sys.executable, __file__, "--one", json.dumps(config)],
                                 check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            h, w = SHAPES[mode]
            print(f"| {h}x{w} | {mode} | {r['amp'] or 'fp32'} | {r['channels_last']} | {r['compile']} "
                  f"| {r['images_per_s']:.3f} | {r['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
