"""``segzoo export``: write a model as ONNX, TorchScript or an ExportedProgram, checked against PyTorch."""

from __future__ import annotations

import argparse

from segzoo.cli.options import add_checkpoint, add_quiet, progress


def _export(args: argparse.Namespace) -> int:
    import segzoo
    from segzoo.export import check_supported, export_model

    if (args.height is None) != (args.width is None):
        raise ValueError("give both --height and --width, or neither (default: the entry's crop size)")
    if args.random_weights and args.checkpoint:
        raise ValueError("--random-weights and --checkpoint exclude each other")
    check_supported(segzoo.model_info(args.model), args.format, args.dynamic)  # before any download
    model = segzoo.create_model(
        args.model,
        pretrained=not (args.checkpoint or args.random_weights),
        checkpoint_path=args.checkpoint,
        allow_unsafe_pickle=args.allow_unsafe_pickle,
        progress=progress(args),
    )
    size = (args.height, args.width) if args.height is not None else None
    report = export_model(model, args.format, args.out, dynamic=args.dynamic, input_size=size, check=not args.no_check)
    print(report.summary())
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    from segzoo.export_formats import EXPORT_FORMATS, MIN_DYNAMIC_SIDE

    p = commands.add_parser(
        "export",
        help="write a model as ONNX, TorchScript or a torch.export ExportedProgram, checked against PyTorch",
        description="Exports the model as segzoo runs it: normalized (1, 3, H, W) images in, logits at the input "
        "resolution out, eval mode. Resizing, normalization and sliding-window inference stay outside.",
    )
    p.add_argument("model", help="registered name or alias")
    p.add_argument("-f", "--format", required=True, choices=EXPORT_FORMATS)
    p.add_argument("-o", "--out", required=True, help="file to write")
    add_checkpoint(p)
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="export randomly initialized weights (no download; for trying the export out)",
    )
    p.add_argument(
        "--dynamic",
        action="store_true",
        help=f"let height and width vary ({MIN_DYNAMIC_SIDE} pixels or more) where the entry allows it",
    )
    p.add_argument("--height", type=int, help="example input height (default: the entry's crop size)")
    p.add_argument("--width", type=int, help="example input width (default: the entry's crop size)")
    p.add_argument("--no-check", action="store_true", help="skip comparing the written file with PyTorch")
    add_quiet(p)
    p.set_defaults(run=_export)
