"""Options several commands share, spelled the same way everywhere."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def add_num_classes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--num-classes",
        type=positive_int,
        metavar="K",
        help="classes of a model fine-tuned on your own data (default: the entry's)",
    )


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def progress(args: argparse.Namespace) -> bool | None:
    """``False`` with ``--quiet``, else ``None``: bars only on a terminal."""
    return False if args.quiet else None


def add_names_or_all(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="*", help="registered names or aliases")
    parser.add_argument("--all", action="store_true", help="every registered model")


def add_checkpoint(parser: argparse.ArgumentParser, required: bool = False) -> None:
    help_text = "the checkpoint file to load" if required else "local checkpoint instead of the published weights"
    parser.add_argument("-c", "--checkpoint", required=required, help=help_text)
    if not required:
        parser.set_defaults(weights_hint=checkpoint_hint)
    parser.add_argument(
        "--allow-unsafe-pickle",
        action="store_true",
        help="unpickle a checkpoint that needs more than tensors; runs its code: trusted files only",
    )


def checkpoint_hint(args: argparse.Namespace) -> str:
    """What a command with ``--checkpoint`` says when the published weights cannot be fetched."""
    return f"segzoo {args.command}: --checkpoint FILE loads a local copy of the weights instead"


def add_inference(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=["whole", "slide"], help="inference mode (default: the entry's)")
    parser.add_argument("--aug-test", action="store_true", help="multi-scale + flip test as the upstream aug-test")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--amp", choices=["bf16", "fp16"], help="run under autocast with this dtype")


def load_model(args: argparse.Namespace, name: str):
    """The model ``name`` with the weights the command line asks for."""
    import segzoo

    return segzoo.create_model(
        name,
        pretrained=args.checkpoint is None,
        checkpoint_path=args.checkpoint,
        allow_unsafe_pickle=args.allow_unsafe_pickle,
        progress=progress(args),
        num_classes=getattr(args, "num_classes", None),
    )
