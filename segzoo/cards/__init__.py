"""Model cards and the README's model and export tables, rendered from the registry.

The cards also show each entry's rows of the zoo benchmark, ``benchmarks/zoo.csv``, when that file
exists. Regenerate the committed copies after changing the zoo, the export table or the benchmark::

    python -m segzoo.cards --write

Other generators build on :func:`expected_files`, adding sections to the cards and blocks to the README
(``python -m segzoo.training.guide --write`` adds the reproduction guides); ``make docs`` runs them all.
Rendering (:mod:`.render`), the benchmark table's reader (:mod:`.benchmark`) and the command line (:mod:`.cli`)
are apart.
"""

from segzoo.cards.benchmark import BENCHMARK_COLUMNS, BENCHMARK_CSV, BenchmarkRow, read_benchmark
from segzoo.cards.cli import main
from segzoo.cards.render import (
    ReadmeBlock,
    expected_files,
    render_export_table,
    render_model_card,
    render_models_table,
)

__all__ = [
    "BENCHMARK_COLUMNS",
    "BENCHMARK_CSV",
    "BenchmarkRow",
    "ReadmeBlock",
    "expected_files",
    "main",
    "read_benchmark",
    "render_export_table",
    "render_model_card",
    "render_models_table",
]
