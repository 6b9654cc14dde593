"""The README's figures, drawn from recorded measurements: the zoo at a glance and a short fine-tune's curve.

``docs/zoo.png``: reported mIoU against reported GFLOPs and against measured CPU latency, one marker per entry,
coloured by paper, shaped by dataset, from the registry and ``benchmarks/zoo.csv`` (written by
``benchmarks/zoo.py``; without it the latency panel says so). ``docs/train_curve.png``: training loss and
validation scores of the run ``benchmarks/train.py curve`` recorded in ``benchmarks/train_curve.json`` (not
drawn without it). Needs matplotlib (the ``docs`` extra)::

    python benchmarks/figures.py          # writes both; `make docs` runs it

The PNG is byte-stable for one matplotlib version: Agg backend, matplotlib's bundled DejaVu Sans,
no software or date metadata.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from segzoo.cards import BENCHMARK_CSV, BenchmarkRow, read_benchmark
from segzoo.families import families
from segzoo.registry import list_models, model_info
from segzoo.zoo.records import ModelInfo

FIGURE = Path("docs") / "zoo.png"
CURVE_FIGURE = Path("docs") / "train_curve.png"
CURVE_RECORD = Path("benchmarks") / "train_curve.json"
# The latency plotted: batch-1 CPU timing at one size for every entry, so entries compare like for like;
# the fast path where it was measured, else eager.
LATENCY_RESOLUTION = "512x512"
LATENCY_MODES = ("fast", "eager")
MIOU_KEYS = ("mIoU", "mean IoU", "IoU class")  # how each paper names single-scale mIoU
DATASET_MARKERS = {"ADE20K": "o", "Cityscapes": "s", "COCO-Stuff54": "^"}


def reported_miou(info: ModelInfo) -> float | None:
    """The entry's single-scale mIoU as its paper reports it, or ``None`` when it reports none."""
    return next((info.metrics[k] for k in MIOU_KEYS if k in info.metrics), None)


def cpu_latency_ms(rows: Sequence[BenchmarkRow]) -> float | None:
    """The entry's CPU latency at ``LATENCY_RESOLUTION`` in the first of ``LATENCY_MODES`` measured."""
    for mode in LATENCY_MODES:
        for row in rows:
            if (row["device"], row["resolution"], row["mode"]) == ("cpu", LATENCY_RESOLUTION, mode) and row[
                "latency_ms"
            ]:
                return float(row["latency_ms"])
    return None


def _style():
    """pyplot on the Agg backend, and the style every figure here is drawn in (byte-stable PNGs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = {"font.family": "DejaVu Sans", "font.size": 9, "svg.hashsalt": "segzoo", "path.simplify": False}
    return plt, plt.rc_context(style)


def _save(fig, out: Path) -> Path:
    """Save ``fig`` as PNG or SVG by ``out``'s suffix, without software or date metadata."""
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"Software": None} if out.suffix == ".png" else {"Date": None, "Creator": None}
    fig.savefig(out, dpi=110, metadata=metadata)
    return out


def draw_zoo_figure(benchmark: Mapping[str, Sequence[BenchmarkRow]], out: Path) -> Path:
    """Draw both panels into ``out`` (PNG or SVG by its suffix) and return it."""
    import matplotlib.ticker

    plt, style = _style()
    with style:
        fig, (by_flops, by_latency) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True, layout="constrained")
        registered = families()
        colours = {family.name: family.colour for family in registered}
        for name in list_models():
            info = model_info(name)
            miou = reported_miou(info)
            if miou is None:
                continue
            marker = {"marker": DATASET_MARKERS.get(info.dataset, "D"), "color": colours[info.family], "s": 28}
            if info.flops_g is not None:
                by_flops.scatter(info.flops_g, miou, **marker)
            latency = cpu_latency_ms(benchmark.get(name, ()))
            if latency is not None:
                by_latency.scatter(latency, miou, **marker)
        by_flops.set(xscale="log", xlabel="GFLOPs as reported (each paper's input size)", ylabel="reported mIoU")
        by_latency.set(xscale="log", xlabel=f"measured CPU latency, ms ({LATENCY_RESOLUTION}, batch 1)")
        if not by_latency.collections:
            by_latency.set_xscale("linear")
            by_latency.text(
                0.5,
                0.5,
                "not yet measured\n(python benchmarks/zoo.py)",
                ha="center",
                va="center",
                transform=by_latency.transAxes,
                color="grey",
            )
        unreported = [f.label for f in registered if all(info.flops_g is None for info in f.entries)]
        by_flops.set_title(
            "reported FLOPs" + (f" ({' and '.join(unreported)} report none)" if unreported else ""), fontsize=9
        )
        by_latency.set_title("measured latency (benchmarks/zoo.csv)", fontsize=9)
        for ax in (by_flops, by_latency):
            ax.grid(True, which="major", alpha=0.3)
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        handles = [
            plt.Line2D([], [], ls="", marker="o", color=family.colour, label=family.label) for family in registered
        ]
        handles += [plt.Line2D([], [], ls="", marker=m, color="grey", label=d) for d, m in DATASET_MARKERS.items()]
        fig.legend(handles=handles, loc="outside right center", frameon=False)
        _save(fig, out)
        plt.close(fig)
    return out


def draw_training_curve(record: Mapping, out: Path) -> Path:
    """Draw the recorded run's training loss and validation scores against the iteration into ``out``."""
    plt, style = _style()
    train = [r for r in record["log"] if "loss" in r]
    evals = [r for r in record["log"] if "eval" in r]
    with style:
        fig, (losses, scores) = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
        losses.plot([r["iter"] for r in train], [r["loss"] for r in train], color="tab:blue")
        losses.set(xlabel="iteration", ylabel="training loss (logged iterations)", ylim=(0, None))
        for metric, colour in (("mIoU", "tab:orange"), ("mAcc", "tab:green"), ("aAcc", "tab:grey")):
            points = [(r["iter"], r["eval"][metric]) for r in evals if metric in r["eval"]]
            if points:
                scores.plot(*zip(*points), marker="o", markersize=3, color=colour, label=metric)
        scores.set(xlabel="iteration", ylabel="validation score (%)", ylim=(0, 100))
        scores.legend(frameon=False, loc="lower right")
        for ax in (losses, scores):
            ax.grid(True, alpha=0.3)
        machine = record["machine"]
        fig.suptitle(
            f"{record['entry']} from {record['start']} weights, {record['train_images']} generated images of "
            f"{len(record['classes'])} classes ({', '.join(record['classes'])})\n{machine['cpu']}, "
            f"{record['threads']} thread(s), {record['wall_s']} s in all",
            fontsize=9,
        )
        _save(fig, out)
        plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root (default: cwd)")
    args = parser.parse_args()
    csv_path = args.root / BENCHMARK_CSV
    benchmark = read_benchmark(csv_path) if csv_path.is_file() else {}
    print(f"wrote {draw_zoo_figure(benchmark, args.root / FIGURE)}")
    curve = args.root / CURVE_RECORD
    if curve.is_file():
        print(f"wrote {draw_training_curve(json.loads(curve.read_text()), args.root / CURVE_FIGURE)}")
    else:
        print(f"no {CURVE_RECORD} (python benchmarks/train.py curve writes it): {CURVE_FIGURE} not drawn")


if __name__ == "__main__":
    main()
