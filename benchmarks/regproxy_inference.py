"""RegionProxy: fused attention against the eager-math baseline, in one process, interleaved.

The baseline is the same model with timm's fused attention switched off (``q @ k^T``, softmax, ``@ v`` as
separate ops, the way ``nn.MultiheadAttention``'s slow path computes them upstream). Both variants run on
the same input, alternating run by run, so that load from other processes hits them alike; the table gives
the median images/s of each, their ratio, and the relative L2 difference of the logits.

Configurations: ViT-S/16 ADE20K on one 512x512 window, and ViT-B/16 Cityscapes on a 1024x2048 image by
RegionProxy's zero-padded slide (768x768 windows, stride 512: 2 x 4 windows): ``segzoo.inference.slide_logits``
on the input tensor, no pre- or post-processing. Weights are random: speed does not depend on them.

    python benchmarks/regproxy_inference.py [--runs 5] [--device cpu] [--skip-cityscapes | --only-cityscapes]
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
from collections.abc import Iterator
from functools import partial

import torch
from measure import interleaved_seconds

import segzoo
from segzoo.inference import slide_logits

CONFIGS = {
    "regproxy_vit_s16_ade20k": (512, 512),
    "regproxy_vit_b16_cityscapes": (1024, 2048),
}
VARIANTS = ("math", "fused")  # attention as separate ops (the baseline), or timm's fused kernel


def forward(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """The logits of ``image`` by the entry's own inference mode: one window, or its slide."""
    pipeline = model.info.test_pipeline
    if tuple(image.shape[2:]) == tuple(pipeline.crop_size):
        return model(image)
    return slide_logits(model, image, model.num_classes, pipeline.crop_size, pipeline.stride, pipeline.slide_windows)


def compare(name: str, shape: tuple[int, int], runs: int, device: str) -> str:
    torch.manual_seed(0)
    model = segzoo.create_model(name).to(device)
    image = torch.randn(1, 3, *shape, device=device)
    outputs: dict[str, torch.Tensor] = {}

    def run(variant: str) -> None:
        outputs[variant] = forward(model, image)

    @contextlib.contextmanager
    def attention(variant: str) -> Iterator[None]:
        model.backbone.set_fused_attn(variant == "fused")
        yield

    with torch.inference_mode():
        seconds = interleaved_seconds({v: partial(run, v) for v in VARIANTS}, runs, device=device, around=attention)
    math_ips, fused_ips = (1 / statistics.median(seconds[v]) for v in VARIANTS)
    rel = ((outputs["fused"] - outputs["math"]).norm() / outputs["math"].norm()).item()
    mode = "whole" if shape == tuple(model.info.test_pipeline.crop_size) else "slide (pad)"
    return (
        f"| {name} | {shape[0]}x{shape[1]} | {mode} | {math_ips:.3g} | {fused_ips:.3g} | "
        f"{fused_ips / math_ips:.2f}x | {rel:.1e} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-cityscapes", action="store_true")
    parser.add_argument("--only-cityscapes", action="store_true")
    args = parser.parse_args()
    on_gpu = args.device.startswith("cuda")
    where = torch.cuda.get_device_name() if on_gpu else platform.processor() or platform.machine()
    print(
        f"torch {torch.__version__}, {args.device} ({where}), {torch.get_num_threads()} threads, "
        f"median of {args.runs} interleaved runs after a warm-up round, fp32"
    )
    print("| model | input | mode | math attention (images/s) | fused attention (images/s) | speed-up | rel. L2 diff |")
    print("|---|---|---|---:|---:|---:|---:|")
    for name, shape in CONFIGS.items():
        if ("cityscapes" in name and args.skip_cityscapes) or ("cityscapes" not in name and args.only_cityscapes):
            continue
        print(compare(name, shape, args.runs, args.device), flush=True)


if __name__ == "__main__":
    main()
