"""Training speed and peak memory of one optimizer step of MogaNet-S FPN at its recipe's crop.

One step = forward, loss, backward and optimizer step on a batch of the
recipe's images per GPU (``--batch`` to change it), random weights and
synthetic data. Prints images per second (median over ``--runs`` steps after
one warm-up) and peak memory: the process's peak RSS on the CPU,
``torch.cuda.max_memory_allocated`` on CUDA. On the CPU it measures fp32
eager; with a GPU it measures fp32 and bf16 autocast + channels_last,
interleaved in one process, and prints their ratio.

    python benchmarks/train.py [--model moganet_s_fpn_ade20k] [--batch N] [--runs 3] [--device cuda]
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import resource
import statistics
import time

import torch

import segzoo
from segzoo.training import build_optimizer, compute_losses, get_recipe


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Variant:
    """A model, its optimizer and a batch, trained in one precision and memory format."""

    def __init__(self, name: str, model_name: str, batch: int, device: torch.device, amp: bool, channels_last: bool):
        self.name, self.device, self.amp = name, device, amp
        self.recipe = get_recipe(model_name)
        self.model = segzoo.create_model(model_name).train().to(device)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=fmt)
        self.optimizer = build_optimizer(self.model, self.recipe)
        h, w = self.recipe.crop_size
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(batch, 3, h, w, generator=generator).to(device, memory_format=fmt)
        classes = self.model.num_classes
        self.labels = torch.randint(0, classes, (batch, h, w), generator=generator).to(device)
        self.times: list[float] = []
        self.peak_mb = 0.0

    def step(self) -> None:
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        with autocast:
            loss = compute_losses(self.model, self.images, self.labels, self.recipe)["loss"]
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter() - start)
        self.peak_mb = max(self.peak_mb, peak_memory_mb(self.device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="moganet_s_fpn_ade20k")
    parser.add_argument("--batch", type=int, help="images per step (default: the recipe's images per GPU)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    recipe = get_recipe(args.model)
    batch = args.batch or recipe.images_per_gpu
    variants = [("fp32", False, False)]
    if device.type == "cuda":
        variants.append(("bf16 + channels_last", True, True))
    else:
        print("no GPU: fp32 eager only (bf16 autocast + channels_last needs a GPU)")
    runs = [Variant(name, args.model, batch, device, amp, cl) for name, amp, cl in variants]
    for run in runs:
        run.step()  # warm-up
        run.times.clear()
    for _ in range(args.runs):  # interleaved, so that load on the machine hits every variant alike
        for run in runs:
            run.step()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"{args.model}, crop {recipe.crop_size[0]}x{recipe.crop_size[1]}, batch {batch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {where}; median of {args.runs} steps after 1 warm-up")
    print("| variant | step (s) | images/s | peak memory (MB) |")
    print("|---|---:|---:|---:|")
    base = statistics.median(runs[0].times)
    for run in runs:
        step = statistics.median(run.times)
        ratio = "" if run is runs[0] else f" ({base / step:.2f}x)"
        print(f"| {run.name} | {step:.3f} | {batch / step:.2f}{ratio} | {run.peak_mb:.0f} |")
    print("peak memory: " + ("the process's peak RSS" if device.type == "cpu" else "max_memory_allocated per step"))


if __name__ == "__main__":
    main()
