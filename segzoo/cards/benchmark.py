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
    "note",
)
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
