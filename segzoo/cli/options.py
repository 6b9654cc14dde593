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


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number of at least 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 0, got {text!r}")
    return value


def available_device(text: str) -> str:
    """An argparse type: a device PyTorch can use on this machine (cpu, cuda[:N], mps or xpu[:N])."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; expected cpu, cuda, cuda:N, mps or xpu") from None
    if device.type == "cpu":
        return text
    if device.type == "cuda":
        available, count, why = torch.cuda.is_available(), torch.cuda.device_count(), "no GPU, driver or CUDA build"
    elif device.type == "mps":
        available, count, why = torch.backends.mps.is_available(), 1, "not an Apple-silicon Mac with Metal"
    elif device.type == "xpu" and hasattr(torch, "xpu"):
        available, count, why = torch.xpu.is_available(), torch.xpu.device_count(), "no Intel GPU or XPU build"
    else:
        raise argparse.ArgumentTypeError(f"device {text!r} is not one segzoo runs on; use cpu, cuda, mps or xpu")
    if not available:
        raise argparse.ArgumentTypeError(
            f"{text}: PyTorch finds no {device.type} device here ({why}); use --device cpu"
        )
    if device.index is not None and device.index >= count:
        raise argparse.ArgumentTypeError(f"{text}: this machine has {count} {device.type} device(s), numbered from 0")
    return text


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
    parser.add_argument("--device", default="cpu", type=available_device, help="torch device, e.g. cpu or cuda")
    parser.add_argument("--amp", choices=["bf16", "fp16"], help="run under autocast with this dtype")
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="fp32 (default, exact) or bf16: the inference fast path in bf16 (several times faster on CPUs with "
        "AVX512-BF16/AMX; float32 where bf16 loses too much; labels can differ at near-ties)",
    )
    parser.add_argument(
        "--no-cuda-graphs",
        dest="cuda_graphs",
        action="store_const",
        const=False,
        help="on a GPU, run every forward eagerly (default: at batch 1 each input size's forward is replayed from a "
        "CUDA graph once it has run once)",
    )


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
