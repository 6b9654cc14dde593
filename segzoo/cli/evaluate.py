"""``segzoo eval`` and ``segzoo prepare``: score a model on its dataset the way its paper did."""

from __future__ import annotations

import argparse
from pathlib import Path

from segzoo.cli.options import (
    add_checkpoint,
    add_inference,
    add_num_classes,
    add_quiet,
    load_model,
    positive_int,
    progress,
)


def _scoring_model(args: argparse.Namespace):
    """The model to score; one whose classifier would start from random values (``--num-classes`` other than
    the weights') is an error: its scores would mean nothing."""
    import warnings

    from segzoo.registry import ClassifierReinitializedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", ClassifierReinitializedWarning)
        try:
            return load_model(args, args.model)
        except ClassifierReinitializedWarning:
            weights = args.checkpoint or f"{args.model}'s published weights"
            raise ValueError(
                f"--num-classes {args.num_classes}: the classifier in {weights} is for another number of classes, "
                f"so eval would score a randomly initialized one; pass --checkpoint with the model fine-tuned "
                f"for {args.num_classes} classes"
            ) from None


def _eval(args: argparse.Namespace) -> int:
    import json
    import os

    import torch.distributed as dist

    import segzoo
    from segzoo.datasets.check import check_custom_data
    from segzoo.datasets.folders import CustomFolder, open_data
    from segzoo.evaluation.runner import evaluate, format_report
    from segzoo.inference.predict import model_for_precision

    device = args.device
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1  # under torchrun
    if launched:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    try:
        info = segzoo.model_info(args.model)
        dataset = open_data(
            info.dataset, args.data, args.split, args.num_classes, info.test_pipeline
        )  # before downloads
        if isinstance(dataset, CustomFolder):
            check_custom_data([dataset], progress=progress(args) if not launched or dist.get_rank() == 0 else False)
        model = model_for_precision(_scoring_model(args).to(device), args.precision)
        result = evaluate(
            model,
            dataset,
            mode=args.mode,
            aug_test=args.aug_test,
            limit=args.limit,
            batch_size=args.batch_size,
            amp=args.amp,
            progress=progress(args),
            save_predictions=Path(args.save_predictions) if args.save_predictions else None,
            cuda_graphs=args.cuda_graphs,
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
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data-root", dest="data", metavar="DIR", help="the entry's dataset in its standard layout")
    data.add_argument(
        "--data",
        dest="data",
        metavar="custom:DIR",
        help="your own dataset folder (see Fine-tune on your own data; needs --num-classes)",
    )
    add_num_classes(p)
    p.add_argument("--split", default="val", help="dataset split (default val)")
    add_checkpoint(p)
    add_inference(p)
    p.add_argument("--limit", type=positive_int, help="evaluate only the first N images")
    p.add_argument(
        "--batch-size", type=positive_int, default=1, help="images per forward pass (same-sized images only)"
    )
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--save-predictions", help="folder for the predicted label maps (indexed PNGs)")
    add_quiet(p)
    p.set_defaults(run=_eval)

    p = commands.add_parser("prepare", help="derive the label files a dataset's evaluation reads (idempotent)")
    p.add_argument("dataset", choices=["cityscapes", "coco-stuff54"])
    p.add_argument("root", help="dataset root folder")
    add_quiet(p)
    p.set_defaults(run=_prepare)
