"""How long the ``segzoo`` command takes to answer: ``list``, ``info`` and ``--help`` (which import no torch)
against ``predict --help`` (which builds the same parser) and a bare ``import torch``, each a fresh process.

Wall-clock seconds of whole processes, median over interleaved runs in one script (``benchmarks/measure.py``);
the point is the answer a person waits for, start-up included.

    python benchmarks/cli_start.py [--runs 9]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
from functools import partial

from measure import interleaved_seconds

COMMANDS = {
    "segzoo list": ["-m", "segzoo.cli", "list"],
    "segzoo info moganet_s_fpn": ["-m", "segzoo.cli", "info", "moganet_s_fpn"],
    "segzoo --help": ["-m", "segzoo.cli", "--help"],
    "python -c 'import torch'": ["-c", "import torch"],
    "python -c 'import segzoo; segzoo.create_model'": ["-c", "import segzoo; segzoo.create_model"],
}


def run(args: list[str]) -> None:
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    seconds = interleaved_seconds({name: partial(run, command) for name, command in COMMANDS.items()}, args.runs)
    print(f"Python {platform.python_version()}, {platform.processor() or platform.machine()}, {args.runs} runs")
    print("| command | median (s) | min (s) |")
    print("|---|---:|---:|")
    for name, runs in seconds.items():
        print(f"| `{name}` | {statistics.median(runs):.2f} | {min(runs):.2f} |")


if __name__ == "__main__":
    main()
