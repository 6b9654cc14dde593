"""The zoo benchmark's table, ``benchmarks/zoo.csv``: its columns (``benchmarks/zoo.py`` writes them) and its reader."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

BENCHMARK_CSV = Path("benchmarks") / "zoo.csv"
BENCHMARK_COLUMNS = (
    "name",
    "family",
    "resolution",
    "mode",
    "device",
    "device_name",
    "threads",
    "images_per_s",
    "latency_ms",
    "peak_mem_mb",
    "gflops",
    "gflop_per_s",
    "peak_fraction",
    "speedup_vs_eager",
    "bf16_max_err",
    "bf16_rel_err",
    "bf16_agreement",
    "bf16_agreement_clear",
    "note",
)
"""``bf16_*``: a bf16 row's distance from eager fp32 (``benchmarks/bf16_fidelity.py`` writes them): largest and
relative logit error, label agreement over all pixels and where fp32's top-2 margin is clear."""
BenchmarkRow = Mapping[str, str]


def read_benchmark(path: Path) -> dict[str, list[BenchmarkRow]]:
    """The rows of a zoo benchmark CSV (``benchmarks/zoo.py`` writes it), by entry name, in file order."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != BENCHMARK_COLUMNS:
            raise ValueError(
                f"{path}: expected the columns {','.join(BENCHMARK_COLUMNS)}, "
                f"got {','.join(reader.fieldnames or ())}; regenerate it with benchmarks/zoo.py"
            )
        rows: dict[str, list[BenchmarkRow]] = {}
        for row in reader:
            rows.setdefault(row["name"], []).append(row)
    return rows
