"""Images/s of ``segzoo.predict_folder`` (read-ahead in DataLoader workers) against the sequential loop
``segzoo predict`` ran before it (read, predict, write, one image after another), on the same images.

The images are generated: ``--images`` random smooth photos of ADE20K's typical size (512x683 JPEGs), segmented
by MogaNet-XT FPN with random weights (speed does not depend on them) at the entry's own test size. Both variants
write indexed label PNGs. They run interleaved in one process, once per round (``measure.interleaved_seconds``),
and are compared round by round. ``--threads`` sets the forward's threads; the workers' decoding and resizing
runs beside it, one thread each. CPU seconds count this process and its finished children (the workers).

    python benchmarks/predict_folder.py [--device cuda] [--images 64] [--workers 2] [--threads 1] [--runs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from measure import cpu_name, interleaved_seconds, pair_ratios
from PIL import Image

import segzoo
from segzoo.datasets import dataset_metadata
from segzoo.inference import load_image
from segzoo.visualize import indexed_labels

MODEL = "moganet_xt_fpn_ade20k"
SIZE = (512, 683)  # (H, W): ADE20K's most common validation image size


def make_photos(folder: Path, count: int) -> list[Path]:
    """``count`` JPEGs of smooth random color fields (they compress and decode like photos, not like noise)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        coarse = rng.integers(0, 255, (SIZE[0] // 32, SIZE[1] // 32, 3), dtype=np.uint8)
        photo = Image.fromarray(coarse).resize(SIZE[::-1], Image.BICUBIC)
        paths.append(folder / f"photo_{i:03d}.jpg")
        photo.save(paths[-1], quality=90)
    return paths


def sequential(model, paths: list[Path], out: Path) -> None:
    """The loop ``segzoo predict`` ran before the folder job: each image read, segmented and written in turn."""
    _, palette = dataset_metadata(model.info.dataset)
    for path in paths:
        image = load_image(path, model.info.test_pipeline)
        labels = segzoo.predict(model, image).labels
        indexed_labels(labels, palette).save(out / f"{path.stem}_{MODEL}_labels.png")


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="read-ahead workers of the second folder-job variant")
    parser.add_argument("--threads", type=int, default=1, help="threads of the forward (main process)")
    parser.add_argument("--runs", type=int, default=2, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=0, help="untimed rounds first (a warm-up forward runs anyway)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = segzoo.create_model(MODEL, pretrained=False).eval().to(args.device)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "photos"
        folder.mkdir()
        paths = make_photos(folder, args.images)
        segzoo.predict(model, paths[0])  # warm-up: the first forward's one-time costs are nobody's
        variants = {
            "sequential": lambda out: sequential(model, paths, out),
            "folder job, no workers": lambda out: segzoo.predict_folder(model, folder, out, workers=0, progress=False),
            f"folder job, {args.workers} workers": lambda out: segzoo.predict_folder(
                model, folder, out, workers=args.workers, progress=False
            ),
        }
        outs = {name: Path(scratch) / f"out{i}" for i, name in enumerate(variants)}
        cpu: dict[str, list[float]] = {name: [] for name in variants}

        def runner(name):
            def run():
                outs[name].mkdir(exist_ok=True)
                before = cpu_seconds()
                variants[name](outs[name])
                cpu[name].append(cpu_seconds() - before)

            return run

        runners = {name: runner(name) for name in variants}
        start = time.time()
        seconds = interleaved_seconds(runners, runs=args.runs, warmup=args.warmup, device=args.device)
        elapsed = time.time() - start
        same = all(
            np.array_equal(np.asarray(Image.open(outs["sequential"] / p.name)), np.asarray(Image.open(p)))
            for out in list(outs.values())[1:]
            for p in out.iterdir()
        )
    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else cpu_name()
    print(f"{args.images} images, {device_name}, torch {torch.__version__}, {args.threads} forward thread(s)")
    print("| variant | seconds per round | images/s | speed-up vs sequential (per round) | CPU s per round |")
    print("|---|---:|---:|---|---:|")
    speedups = {}
    for name, times in seconds.items():
        median = statistics.median(times)
        speedups[name] = pair_ratios(seconds["sequential"], times)
        per_round = " / ".join(f"{r:.2f}x" for r in speedups[name])
        cpu_median = statistics.median(cpu[name][args.warmup :])
        print(f"| {name} | {median:.2f} | {args.images / median:.2f} | {per_round} | {cpu_median:.1f} |")
    print(f"labels identical: {same}; load average after: {os.getloadavg()}; {elapsed:.0f} s in all")
    print(json.dumps({"seconds": seconds, "cpu": cpu, "speedups": speedups, "identical": same}))


if __name__ == "__main__":
    main()
