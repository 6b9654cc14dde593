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
import statistics
from collections.abc import Iterator

import torch
from measure import interleaved_seconds

import segzoo
from segzoo.training import build_optimizer, compute_losses, get_recipe
from segzoo.training.run_log import peak_memory_mb


class Variant:
    """A model, its optimizer and a batch, trained in one precision and memory format."""

    def __init__(self, model_name: str, batch: int, device: torch.device, amp: bool, channels_last: bool):
        self.device, self.amp = device, amp
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
        self.peak_mb = 0.0

    def step(self) -> None:
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()
        with autocast:
            loss = compute_losses(self.model, self.images, self.labels, self.recipe)["loss"]
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @contextlib.contextmanager
    def watch_memory(self) -> Iterator[None]:
        """Keeps the largest peak memory of one step (on CUDA the peak since the step began)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        yield
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
    runs = {name: Variant(args.model, batch, device, amp, cl) for name, amp, cl in variants}
    seconds = interleaved_seconds(
        {name: run.step for name, run in runs.items()},
        args.runs,
        device=device,
        around=lambda name: runs[name].watch_memory(),
    )
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(
        f"{args.model}, crop {recipe.crop_size[0]}x{recipe.crop_size[1]}, batch {batch}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {where}; median of {args.runs} steps after 1 warm-up"
    )
    print("| variant | step (s) | images/s | peak memory (MB) |")
    print("|---|---:|---:|---:|")
    base = statistics.median(seconds["fp32"])
    for name, run in runs.items():
        step = statistics.median(seconds[name])
        ratio = "" if name == "fp32" else f" ({base / step:.2f}x)"
        print(f"| {name} | {step:.3f} | {batch / step:.2f}{ratio} | {run.peak_mb:.0f} |")
    print("peak memory: " + ("the process's peak RSS" if device.type == "cpu" else "max_memory_allocated per step"))


if __name__ == "__main__":
    main()
