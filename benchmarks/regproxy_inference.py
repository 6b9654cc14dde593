"""RegionProxy: fused attention against the eager-math baseline, in one process, interleaved.

The baseline is the same model with timm's fused attention switched off (``q @ k^T``, softmax, ``@ v`` as
separate ops, the way ``nn.MultiheadAttention``'s slow path computes them upstream). Both variants run on
the same input, alternating run by run, so that load from other processes hits them alike; the table gives
the median images/s of each, their ratio, and the relative L2 difference of the logits.

Configurations: ViT-S/16 ADE20K on one 512x512 window, and ViT-B/16 Cityscapes on a 1024x2048 image by
RegionProxy's zero-padded slide (768x768 windows, stride 512: 2 x 4 windows), done here window by window.
Weights are random: speed does not depend on them.

    python benchmarks/regproxy_inference.py [--runs 5] [--device cpu] [--skip-cityscapes | --only-cityscapes]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

import segzoo

CONFIGS = {
    "regproxy_vit_s16_ade20k": (512, 512),
    "regproxy_vit_b16_cityscapes": (1024, 2048),
}


def padded_slide(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Logits of ``image`` by RegionProxy's slide: every window zero-padded to the crop, averaged where they overlap."""
    pipeline = model.info.test_pipeline
    (crop_h, crop_w), (stride_h, stride_w) = pipeline.crop_size, pipeline.stride
    n, _, h, w = image.shape
    logits = image.new_zeros((n, model.num_classes, h, w))
    counts = image.new_zeros((1, 1, h, w))
    for row in range(max(h - crop_h + stride_h - 1, 0) // stride_h + 1):
        for col in range(max(w - crop_w + stride_w - 1, 0) // stride_w + 1):
            y2, x2 = min(row * stride_h + crop_h, h), min(col * stride_w + crop_w, w)
            y1, x1 = max(y2 - crop_h, 0), max(x2 - crop_w, 0)
            window = image[:, :, y1:y2, x1:x2]
            padded = F.pad(window, (0, crop_w - window.shape[3], 0, crop_h - window.shape[2]))
            logits[:, :, y1:y2, x1:x2] += model(padded)[:, :, : y2 - y1, : x2 - x1]
            counts[:, :, y1:y2, x1:x2] += 1
    return logits / counts


def forward(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    crop = model.info.test_pipeline.crop_size
    return model(image) if tuple(image.shape[2:]) == tuple(crop) else padded_slide(model, image)


def compare(name: str, shape: tuple[int, int], runs: int, device: str) -> str:
    torch.manual_seed(0)
    model = segzoo.create_model(name).to(device)
    image = torch.randn(1, 3, *shape, device=device)
    seconds: dict[bool, list[float]] = {False: [], True: []}
    outputs: dict[bool, torch.Tensor] = {}
    with torch.inference_mode():
        for run in range(runs + 1):  # the first round warms both variants up
            for fused in (False, True):
                model.backbone.set_fused_attn(fused)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                outputs[fused] = forward(model, image)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                if run:
                    seconds[fused].append(time.perf_counter() - start)
    math_ips, fused_ips = (1 / statistics.median(seconds[f]) for f in (False, True))
    rel = ((outputs[True] - outputs[False]).norm() / outputs[False].norm()).item()
    mode = "whole" if shape == tuple(model.info.test_pipeline.crop_size) else "slide (pad)"
    return (f"| {name} | {shape[0]}x{shape[1]} | {mode} | {math_ips:.3g} | {fused_ips:.3g} | "
            f"{fused_ips / math_ips:.2f}x | {rel:.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-cityscapes", action="store_true")
    parser.add_argument("--only-cityscapes", action="store_true")
    args = parser.parse_args()
    on_gpu = args.device.startswith("cuda")
    where = torch.cuda.get_device_name() if on_gpu else platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {args.device} ({where}), {torch.get_num_threads()} threads, "
          f"median of {args.runs} interleaved runs after a warm-up round, fp32")
    print("| model | input | mode | math attention (images/s) | fused attention (images/s) | speed-up | rel. L2 diff |")
    print("|---|---|---|---:|---:|---:|---:|")
    for name, shape in CONFIGS.items():
        if ("cityscapes" in name and args.skip_cityscapes) or ("cityscapes" not in name and args.only_cityscapes):
            continue
        print(compare(name, shape, args.runs, args.device), flush=True)


if __name__ == "__main__":
    main()
