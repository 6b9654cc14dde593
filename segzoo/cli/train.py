"""``segzoo train``: run an entry's training recipe (one process; ``torchrun -m segzoo.training`` for several)."""
from __future__ import annotations

import argparse


def _train(args: argparse.Namespace) -> int:
    from segzoo.training.cli import run

    return run(args)


def register(commands: argparse._SubParsersAction) -> None:
    from segzoo.training.cli import add_train_arguments

    p = commands.add_parser("train", help="train an entry with its paper's recipe, or fine-tune it on your data")
    add_train_arguments(p)
    p.set_defaults(run=_train)
