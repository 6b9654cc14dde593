"""Throughput and peak memory of ``segzoo.predict``, one named case per row.

Each case names a model, an input size, an inference mode and predict options; a family adds
its rows by appending to ``CASES``. Variants (bf16 autocast, channels_last, ``torch.compile``)
run on CUDA only. Every configuration runs in a fresh process so that its peak memory is its
own: on the CPU the process's peak resident set size (``ru_maxrss``: everything the process
touched, model, images, PyTorch's allocator and all, as the operating system counts it), on a
GPU ``torch.cuda.max_memory_allocated``. GFLOP/s divides the FLOPs ``FlopCounterMode`` counts
in one ``predict`` call (convolutions and matrix products) by its time. Weights are random:
speed and memory do not depend on them. The family scripts beside this one pair segzoo with a
baseline in one process (EMANet memory formats, RegionProxy attention, EurNet's scatter port).

    python benchmarks/inference.py [--device cuda] [--runs 3] [--case NAME ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from measure import interleaved_seconds, run_fresh
from torch.utils.flop_counter import FlopCounterMode

from segzoo.training.run_log import peak_memory_mb


@dataclass(frozen=True)
class Case:
    """One benchmark row: ``model`` on a random ``height x width`` photo in ``mode``, with ``predict`` options."""

    name: str
    model: str
    height: int
    width: int
    mode: str | None = None  # None: the entry's own inference mode
    options: dict = field(default_factory=dict)
    runs: int | None = None  # overrides --runs (big images: one run)
    warmup: int | None = None


CASES = [
    Case("upernet-512", "moganet_s_upernet_ade20k", 512, 512),
    Case("upernet-slide", "moganet_s_upernet_ade20k", 512, 2048, mode="slide"),
    # A 5000x5000 photo is resized to 512x512 for the model; what grows is the final resize to 5000x5000.
    Case("fpn-5000-labels", "moganet_s_fpn_ade20k", 5000, 5000, runs=1, warmup=0),
    # EMANet's test size; the paired NCHW / channels_last comparison is benchmarks/emanet_inference.py.
    Case("emanet-r50-cityscapes", "emanet_r50_cityscapes", 1024, 2048, runs=1),
    Case("emanet-r50-cityscapes-cl", "emanet_r50_cityscapes", 1024, 2048, options={"channels_last": True}, runs=1),
    # Fused against math attention, paired: benchmarks/regproxy_inference.py.
    Case("regproxy-s16-512", "regproxy_vit_s16_ade20k", 512, 512),
    Case("regproxy-b16-cityscapes", "regproxy_vit_b16_cityscapes", 1024, 2048, runs=1),
    # Dense against a scatter port of the upstream structure, paired: benchmarks/eurnet_inference.py.
    Case("eurnet-t-512", "eurnet_t_upernet_ade20k", 512, 512),
]
GPU_VARIANTS = [
    dict(amp="bf16"),
    dict(channels_last=True),
    dict(amp="bf16", channels_last=True),
    dict(compile=True),
]


def run_one(config: dict) -> dict:
    import segzoo

    case = Case(**config["case"])
    device = config["device"]
    options = {**case.options, **config["variant"]}
    torch.manual_seed(0)
    model = segzoo.create_model(case.model).to(device)
    if options.pop("compile", False):
        model = torch.compile(model)  # attribute access (info, num_classes) falls through to the model
    image = np.random.default_rng(0).integers(0, 255, (case.height, case.width, 3), dtype=np.uint8)
    predict = {case.name: lambda: segzoo.predict(model, image, mode=case.mode, **options)}
    warmup = case.warmup if case.warmup is not None else config["warmup"]
    with FlopCounterMode(display=False) as flops:  # the first run counts what predict computes
        interleaved_seconds(predict, runs=0, warmup=1, device=device)
    interleaved_seconds(predict, runs=0, warmup=max(warmup - 1, 0), device=device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    runs = case.runs or config["runs"]
    seconds = statistics.median(interleaved_seconds(predict, runs, warmup=0, device=device)[case.name])
    peak_mb = peak_memory_mb(device)
    return {"images_per_s": 1 / seconds, "peak_mb": peak_mb, "gflops_per_s": flops.get_total_flops() / seconds / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--case", nargs="+", choices=[c.name for c in CASES], help="only these cases")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a single configuration, as JSON (internal)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    variants = [{}] + (GPU_VARIANTS if args.device.startswith("cuda") else [])
    name = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine()
    )
    print(
        f"torch {torch.__version__}, {args.device} ({name}), {torch.get_num_threads()} CPU threads, "
        f"median of {args.runs} runs after {args.warmup} warm-up unless the case says otherwise"
    )
    print("| case | model | input | mode | options | images/s | GFLOP/s | peak memory (MB) |")
    print("|---|---|---|---|---|---:|---:|---:|")
    for case in CASES:
        if args.case and case.name not in args.case:
            continue
        for variant in variants:
            config = dict(case=asdict(case), variant=variant, device=args.device, runs=args.runs, warmup=args.warmup)
            r = run_fresh(__file__, "--one", json.dumps(config))
            options = ", ".join(f"{k}={v}" for k, v in {**case.options, **variant}.items()) or "fp32"
            print(
                f"| {case.name} | {case.model} | {case.height}x{case.width} | {case.mode or 'as tested'} | {options} "
                f"| {r['images_per_s']:.3f} | {r['gflops_per_s']:.1f} | {r['peak_mb']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
