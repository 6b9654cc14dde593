"""The zoo at a glance, for the README: reported mIoU against reported GFLOPs and against measured CPU latency.

One marker per entry, coloured by paper, shaped by dataset, from the registry and ``benchmarks/zoo.csv``
(written by ``benchmarks/zoo.py``; without it the latency panel says so). Needs matplotlib (the
``docs`` extra)::

    python benchmarks/figures.py          # writes docs/zoo.png; `make docs` runs it

The PNG is byte-stable for one matplotlib version: Agg backend, matplotlib's bundled DejaVu Sans,
no software or date metadata.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path

from segzoo.cards import BENCHMARK_CSV, BenchmarkRow, read_benchmark
from segzoo.families import families
from segzoo.registry import list_models, model_info
from segzoo.zoo.records import ModelInfo

FIGURE = Path("docs") / "zoo.png"
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


def draw_zoo_figure(benchmark: Mapping[str, Sequence[BenchmarkRow]], out: Path) -> Path:
    """Draw both panels into ``out`` (PNG or SVG by its suffix) and return it."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = {"font.family": "DejaVu Sans", "font.size": 9, "svg.hashsalt": "segzoo", "path.simplify": False}
    with plt.rc_context(style):
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
        out.parent.mkdir(parents=True, exist_ok=True)
        metadata = {"Software": None} if out.suffix == ".png" else {"Date": None, "Creator": None}
        fig.savefig(out, dpi=110, metadata=metadata)
        plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root (default: cwd)")
    args = parser.parse_args()
    csv_path = args.root / BENCHMARK_CSV
    benchmark = read_benchmark(csv_path) if csv_path.is_file() else {}
    print(f"wrote {draw_zoo_figure(benchmark, args.root / FIGURE)}")


if __name__ == "__main__":
    main()
