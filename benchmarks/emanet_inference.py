"""EMANet-R50 Cityscapes at its test size (1024x2048) on the CPU, NCHW against channels_last.

Prints images per second, achieved GFLOP/s (FLOPs of one forward counted with
``torch.utils.flop_counter.FlopCounterMode``) and peak memory for the model's
forward on one normalized image. The machine this runs on is shared and noisy,
so the two memory formats are timed interleaved in one process and their
ratio is what to trust; peak memory (peak RSS, and its growth over the RSS
after building the model) is measured per format in a fresh process. Weights
are random: speed does not depend on them.

    PYTHONPATH=. python benchmarks/emanet_inference.py [--runs 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from functools import partial

import torch
from measure import interleaved_seconds, pair_ratios, run_fresh
from torch.utils.flop_counter import FlopCounterMode

from segzoo.training.run_log import peak_memory_mb

MODEL = "emanet_r50_cityscapes"
SIZE = (1024, 2048)
FORMATS = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}


def _model_and_input(memory_format: torch.memory_format) -> tuple[torch.nn.Module, torch.Tensor]:
    import segzoo

    torch.manual_seed(0)
    model = segzoo.create_model(MODEL).to(memory_format=memory_format)
    image = torch.randn(1, 3, *SIZE).contiguous(memory_format=memory_format)
    return model, image


def peak_memory(format_name: str) -> dict:
    """Peak RSS of building the model and running one forward, in this (fresh) process."""
    model, image = _model_and_input(FORMATS[format_name])
    built_mb = peak_memory_mb("cpu")
    with torch.inference_mode():
        model(image)
    peak_mb = peak_memory_mb("cpu")
    return {"format": format_name, "peak_mb": peak_mb, "forward_mb": peak_mb - built_mb}


def timings(runs: int) -> tuple[float, dict[str, list[float]]]:
    """FLOPs of one forward and, per memory format, the seconds of each run (formats alternate)."""
    prepared = {name: _model_and_input(fmt) for name, fmt in FORMATS.items()}
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        prepared["NCHW"][0](prepared["NCHW"][1])
    with torch.inference_mode():
        seconds = interleaved_seconds({name: partial(model, image) for name, (model, image) in prepared.items()}, runs)
    return counter.get_total_flops(), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--memory", choices=FORMATS, help=argparse.SUPPRESS)  # one memory run (internal)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory:
        print(json.dumps(peak_memory(args.memory)))
        return
    memory = {name: run_fresh(__file__, "--memory", name, "--threads", str(args.threads)) for name in FORMATS}
    flops, seconds = timings(args.runs)
    print(
        f"{MODEL} at {SIZE[0]}x{SIZE[1]}, torch {torch.__version__}, "
        f"CPU ({platform.processor() or platform.machine()}), "
        f"{args.threads} threads, median of {args.runs} interleaved runs after 1 warm-up; "
        f"{flops / 1e9:.1f} GFLOP per forward"
    )
    print("| memory format | s/image | images/s | GFLOP/s | peak RSS (MB) | forward peak over model (MB) |")
    print("|---|---:|---:|---:|---:|---:|")
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    for name, median in medians.items():
        print(
            f"| {name} | {median:.2f} | {1 / median:.3f} | {flops / median / 1e9:.1f} "
            f"| {memory[name]['peak_mb']:.0f} | {memory[name]['forward_mb']:.0f} |"
        )
    ratios = pair_ratios(seconds["NCHW"], seconds["channels_last"])
    print(
        f"channels_last speed-up over NCHW: {statistics.median(ratios):.2f}x "
        f"(per interleaved pair: {', '.join(f'{r:.2f}' for r in ratios)})"
    )


if __name__ == "__main__":
    main()
