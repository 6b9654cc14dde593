"""``segzoo train`` and ``torchrun -m segzoo.training``: the options of a training run, and running it.

``segzoo`` finds :func:`register` through the ``segzoo.commands`` entry point
(setup.cfg). Only ``argparse`` at import: ``segzoo``'s parser adds these
options without loading the training code.
"""

from __future__ import annotations

import argparse
import importlib.util
from typing import TYPE_CHECKING

from segzoo.cli.options import positive_int
from segzoo.training.recipe import FINE_TUNE_ITERS

if TYPE_CHECKING:
    from segzoo.training.config import TrainConfig


def _interval(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of iterations (0: never), got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a training run (see :class:`segzoo.training.config.TrainConfig`)."""
    parser.add_argument("entry", help="registered model name or alias whose recipe to run")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--data-root", dest="data", metavar="DIR", help="the entry's dataset in its standard layout")
    data.add_argument(
        "--data", dest="custom", metavar="custom:DIR", help="your own dataset folder (fine-tuning; needs --num-classes)"
    )
    parser.add_argument("--num-classes", type=positive_int, metavar="K", help="classes of your labels (custom data)")
    parser.add_argument("--work-dir", help="checkpoints and log.jsonl (default: work_dirs/ENTRY)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="CKPT",
        help="go on from CKPT, or without a value from the latest checkpoint in the work dir",
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument(
        "--iters",
        type=positive_int,
        help="iterations; the schedule (warm-up included) and the intervals stretch to them "
        f"(default: the recipe's; with custom data {FINE_TUNE_ITERS})",
    )
    length.add_argument(
        "--epochs",
        type=_positive_float,
        metavar="E",
        help="iterations of E passes over the train split: ceil(E x images / total batch), stretched as --iters",
    )
    parser.add_argument(
        "--lr", type=_positive_float, help="base learning rate (default: the recipe's; per-parameter factors apply)"
    )
    parser.add_argument(
        "--warmup-iters",
        type=_interval,
        metavar="W",
        help="warm-up iterations (0: none; default: the recipe's, stretched with --iters)",
    )
    parser.add_argument(
        "--init-from",
        metavar="FILE",
        help="start from this local checkpoint of the entry (upstream file, segzoo .safetensors or a segzoo train "
        "iter_*.pth) instead of published or ImageNet weights",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        help="images per process and micro-step (default: the paper's images per GPU)",
    )
    parser.add_argument(
        "--accumulation",
        type=positive_int,
        help="micro-steps per optimizer step (default: "
        "recipe total / (processes x batch size), which reproduces the recipe's batch)",
    )
    parser.add_argument(
        "--amp",
        choices=["bf16", "fp16", "none"],
        default="none",
        help="mixed precision: bf16 autocast, or fp16 with a gradient scaler (default none)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of initialization, data order and augmentation")
    parser.add_argument("--workers", type=int, default=4, help="data loader workers per process (default 4)")
    parser.add_argument(
        "--eval-interval", type=_interval, help="evaluate on val every N iterations (0: never; default: the recipe's)"
    )
    parser.add_argument(
        "--checkpoint-interval",
        type=positive_int,
        help="save every N iterations (default: the recipe's; always at the end)",
    )
    parser.add_argument("--log-interval", type=positive_int, default=50, help="log every N iterations (default 50)")
    parser.add_argument(
        "--crop", type=positive_int, nargs=2, metavar=("H", "W"), help="training crop (default: the recipe's)"
    )
    parser.add_argument("--drop-path", type=float, metavar="RATE", help="stochastic depth rate (default: the entry's)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument(
        "--no-imagenet",
        dest="imagenet",
        action="store_false",
        help="do not load the recipe's ImageNet-pretrained backbone (random initialization)",
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--pretrained",
        dest="pretrained",
        action="store_true",
        default=None,
        help="start from the entry's published weights (default with custom data)",
    )
    start.add_argument(
        "--from-scratch",
        "--no-pretrained",
        dest="pretrained",
        action="store_false",
        help="custom data: start from the ImageNet backbone, not the entry's published weights",
    )
    parser.add_argument(
        "--sync-bn",
        action=argparse.BooleanOptionalAction,
        help="SyncBN across processes (default: the recipe's, where it works: several processes on CUDA devices)",
    )
    parser.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write the log as TensorBoard scalars to WORK_DIR/tensorboard (needs segzoo[tensorboard])",
    )
    parser.add_argument("--print-recipe", action="store_true", help="print the resolved recipe as JSON and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``segzoo train``: run an entry's training recipe (one process; ``torchrun -m segzoo.training`` for
    several)."""
    p = commands.add_parser("train", help="train an entry with its paper's recipe, or fine-tune it on your data")
    add_train_arguments(p)
    p.set_defaults(run=run, weights_hint=weights_hint)


def weights_hint(args: argparse.Namespace) -> str:
    """What ``segzoo train`` says when the weights it starts from cannot be fetched: how to start from others."""
    published = args.custom is not None if args.pretrained is None else args.pretrained
    if published:
        return (
            "segzoo train: --init-from FILE starts from a local copy of these weights, --from-scratch from the "
            "entry's ImageNet backbone instead"
        )
    return (
        "segzoo train: --no-imagenet starts the backbone from a random initialization instead of the ImageNet file, "
        "--init-from FILE from a local checkpoint"
    )


def require_train_extra() -> None:
    """Training needs the ``train`` extra; say how to get it instead of failing on an import deep inside."""
    if importlib.util.find_spec("torchvision") is None:
        raise ImportError('segzoo training needs torchvision, from the "train" extra: pip install "segzoo[train]"')


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed options."""
    from segzoo.datasets.folders import CUSTOM_PREFIX
    from segzoo.training.config import TrainConfig

    names = TrainConfig.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if args.custom is not None:
        if not args.custom.startswith(CUSTOM_PREFIX):
            raise ValueError(
                f"--data {args.custom!r}: expected {CUSTOM_PREFIX}DIR (your images and label PNGs, "
                f"see the README); for the entry's own dataset use --data-root DIR"
            )
        values["data"] = args.custom
    if "crop" in values:
        values["crop"] = tuple(values["crop"])
    return TrainConfig(**values)


def run(args: argparse.Namespace) -> int:
    """Print the recipe or train, as the parsed ``args`` ask."""
    import json
    import os

    from segzoo.training.build import starting_weights
    from segzoo.training.config import resolve_recipe
    from segzoo.zoo.records import to_plain

    config = config_from_args(args)
    if args.print_recipe:
        recipe = resolve_recipe(config)
        print(json.dumps({**to_plain(recipe), "start_from": starting_weights(config, recipe)}, indent=2))
        return 0
    require_train_extra()
    from segzoo.training.loop import train  # its data pipeline needs torchvision

    path = train(config)
    if not config.quiet and os.environ.get("RANK", "0") == "0":
        print(f"final checkpoint: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m segzoo.training`` (under ``torchrun`` for several processes); same user-error convention as
    ``segzoo``: one ``error:`` line, exit status 1."""
    import sys

    from segzoo.cli import main as segzoo_main

    return segzoo_main(["train", *(sys.argv[1:] if argv is None else argv)])
