"""The bf16 fast path's speed against eager fp32, one entry per architecture, on one CPU thread.

For each entry (random weights, a normalized ``1x3xSxS`` input, default 512): eager fp32 (``create_model``), the
fp32 fast path (``optimize_for_inference``) and the bf16 fast path (``dtype=torch.bfloat16``) run interleaved in
this process, timed by process CPU time with ``torch.set_num_threads(1)``; the speedups are medians of the
per-round ratios to eager. The CPU's bf16 peak is measured first (a large bf16 matmul and a 3x3 convolution,
beside their fp32 forms), so that ``--profile`` can put each top op of the bf16 model against it.

    PYTHONPATH=. python benchmarks/bf16_speed.py [--entries a,b] [--size 512] [--runs 5] [--profile]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from functools import partial

import torch
import torch.nn.functional as F
from measure import interleaved_seconds, pair_ratios
from zoo import device_name

import segzoo
from segzoo.optimize import cpu_computes_bf16

TARGETS = {
    "moganet_s_fpn_ade20k": 3.0,
    "moganet_s_upernet_ade20k": 3.0,
    "eurnet_t_upernet_ade20k": 3.0,
    "emanet_r50_cityscapes": 2.5,
    "glore_r50_fcn_cityscapes": 2.5,
    "regproxy_vit_s16_ade20k": 2.5,
    "regproxy_vit_b16_ade20k": 2.5,
    "regproxy_r26_vit_s32_ade20k": 2.0,
}
"""The speedups over eager fp32 that issue 23 asks of the bf16 fast path."""


def best_gflops(fn, flops: float, repeats: int = 5) -> float:
    return flops / min(interleaved_seconds({"peak": fn}, repeats, clock=time.process_time)["peak"]) / 1e9


def peaks() -> dict[str, float]:
    """GFLOP/s of a 2048^3 matmul and a 256->256 3x3 convolution at 64x64, channels-last, fp32 and bf16."""
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
        out[f"{name} matmul"] = best_gflops(partial(torch.mm, a, b), 2.0 * 2048**3)
        x = torch.randn(1, 256, 64, 64, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(256, 256, 3, 3, dtype=dtype).contiguous(memory_format=torch.channels_last)
        out[f"{name} conv3x3"] = best_gflops(partial(F.conv2d, x, w, padding=1), 2.0 * 256 * 256 * 9 * 64 * 64)
    return out


def profile(model: torch.nn.Module, x: torch.Tensor, top: int = 8) -> list[dict]:
    """The ``top`` ops by self CPU time in one forward, with their share and (where counted) GFLOP/s."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_flops=True) as prof:
        model(x)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [
        {
            "op": e.key,
            "share": round(e.self_cpu_time_total / total, 3),
            "ms": round(e.self_cpu_time_total / 1e3, 1),
            "gflop_per_s": round(e.flops / e.self_cpu_time_total / 1e3, 1) if e.flops else None,
        }
        for e in events[:top]
    ]


def measure(name: str, size: int, runs: int, with_profile: bool) -> dict:
    torch.manual_seed(0)
    eager = segzoo.create_model(name)
    fast = segzoo.optimize_for_inference(eager)
    bf16 = segzoo.optimize_for_inference(eager, dtype=torch.bfloat16)
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        runners = {"eager": partial(eager, x), "fast": partial(fast, x), "bf16": partial(bf16, x)}
        seconds = interleaved_seconds(runners, runs, clock=time.process_time)
        result = {
            "entry": name,
            "input": f"{size}x{size}",
            "eager_s": round(statistics.median(seconds["eager"]), 3),
            "fast_vs_eager": round(statistics.median(pair_ratios(seconds["eager"], seconds["fast"])), 2),
            "bf16_vs_eager": round(statistics.median(pair_ratios(seconds["eager"], seconds["bf16"])), 2),
            "target": TARGETS.get(name),
        }
        if with_profile:
            result["bf16_profile"] = profile(bf16, x)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", default=",".join(TARGETS), help="comma-separated registry names")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="the bf16 model's top ops (torch.profiler)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        json.dumps(
            {
                "cpu": device_name(torch.device("cpu")),
                "capability": torch.backends.cpu.get_cpu_capability(),
                "bf16_instructions": cpu_computes_bf16(),
                "torch": torch.__version__,
                "python": platform.python_version(),
                "peak_gflop_per_s": {k: round(v, 1) for k, v in peaks().items()},
            }
        ),
        flush=True,
    )
    for name in args.entries.split(","):
        print(json.dumps(measure(name, args.size, args.runs, args.profile)), flush=True)


if __name__ == "__main__":
    main()
