"""``segzoo eval`` and ``segzoo prepare``: score a model on its dataset the way its paper did."""
from __future__ import annotations

import argparse
from pathlib import Path

from segzoo.cli.options import add_checkpoint, add_inference, add_quiet, load_model, progress


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _eval(args: argparse.Namespace) -> int:
    import json
    import os

    import torch.distributed as dist

    import segzoo
    from segzoo.datasets.folders import open_dataset
    from segzoo.evaluation.runner import evaluate, format_report

    device = args.device
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1  # under torchrun
    if launched:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    try:
        info = segzoo.model_info(args.model)
        dataset = open_dataset(info.dataset, args.data_root, args.split, info.test_pipeline)  # before downloads
        model = load_model(args, args.model)
        result = evaluate(
            model.to(device), dataset, mode=args.mode, aug_test=args.aug_test, limit=args.limit,
            batch_size=args.batch_size, amp=args.amp, progress=progress(args),
            save_predictions=Path(args.save_predictions) if args.save_predictions else None,
        )
        if not launched or dist.get_rank() == 0:
            print(format_report(result))
            if args.out:
                Path(args.out).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
                print(f"wrote {args.out}")
    finally:
        if launched:
            dist.destroy_process_group()
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from segzoo.datasets.prepare import prepare_cityscapes, prepare_coco_stuff54

    prepare = {"cityscapes": prepare_cityscapes, "coco-stuff54": prepare_coco_stuff54}[args.dataset]
    written = prepare(args.root, progress=progress(args))
    print(f"wrote {written} label files under {args.root}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("eval", help="measure a model's metrics on its dataset, next to the reported ones")
    p.add_argument("model", help="registered name or alias")
    p.add_argument("--data-root", required=True, help="dataset folder in its standard layout")
    p.add_argument("--split", default="val", help="dataset split (default val)")
    add_checkpoint(p)
    add_inference(p)
    p.add_argument("--limit", type=_positive_int, help="evaluate only the first N images")
    p.add_argument("--batch-size", type=_positive_int, default=1,
                   help="images per forward pass (same-sized images only)")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--save-predictions", help="folder for the predicted label maps (indexed PNGs)")
    add_quiet(p)
    p.set_defaults(run=_eval)

    p = commands.add_parser("prepare", help="derive the label files a dataset's evaluation reads (idempotent)")
    p.add_argument("dataset", choices=["cityscapes", "coco-stuff54"])
    p.add_argument("root", help="dataset root folder")
    add_quiet(p)
    p.set_defaults(run=_prepare)
