"""``segzoo predict``: segment images and folders and write PNGs, every readable image even when some are not;
under ``torchrun`` each process takes its share of the images."""

from __future__ import annotations

import argparse
import os
import sys
from importlib import resources
from pathlib import Path

from segzoo.cli.options import add_checkpoint, add_inference, add_quiet, load_model, non_negative_int

DEFAULT_MODEL = "moganet_s_fpn_ade20k"


def sample_image_path() -> Path:
    """The CC0 sample image that ships with segzoo (see ``segzoo/assets/README.md``)."""
    return Path(str(resources.files("segzoo") / "assets" / "sample.png"))


def _launched_by_torchrun() -> bool:
    """Whether this process is one of several that a launcher started to meet in a process group."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "MASTER_ADDR" in os.environ


def _print_written(task) -> None:
    for path in task.outputs:
        print(f"wrote {path}")


def _predict(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    import segzoo
    from segzoo.inference.predict import PRECISIONS
    from segzoo.jobs.files import plan_tasks
    from segzoo.jobs.folder import part_path, run_tasks

    name = segzoo.model_info(args.model).name
    out = Path(args.out) if args.out else Path.cwd()
    inputs = args.images or [sample_image_path()]
    if args.output is None:  # a folder job's default is the label images; one image's, the overlay to look at
        args.output = "labels" if any(Path(item).is_dir() for item in inputs) else "overlay"
    tasks = plan_tasks(inputs, out, name, args.output, args.recursive, args.save_scores)
    device = args.device
    launched = _launched_by_torchrun()
    if launched:  # a group only to add up the summary and join the area table: counts travel by gloo
        dist.init_process_group("gloo")
        if device.startswith("cuda"):
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    try:
        model = load_model(args, args.model).to(device)
        if args.fast or args.precision != "fp32":
            model = segzoo.optimize_for_inference(model, inplace=True, dtype=PRECISIONS[args.precision])
        bar = not args.quiet and sys.stderr.isatty()
        summary = run_tasks(
            model,
            tasks,
            output=args.output,
            workers=args.workers,
            skip_existing=args.skip_existing,
            summary=args.summary,
            mode=args.mode,
            aug_test=args.aug_test,
            amp=args.amp,
            progress=bar,
            on_written=None if bar else _print_written,
            cuda_graphs=args.cuda_graphs,
        )
    finally:
        if launched:
            dist.destroy_process_group()
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0 or not summary.combined:
        total = summary.done + summary.skipped + summary.failed
        if args.summary:
            table = Path(args.summary)
            if summary.processes > 1 and not summary.combined:
                print(f"wrote {part_path(table, rank, summary.processes)} (this process's rows of {table})")
            else:
                print(f"wrote {table}")
        if total > 1 or summary.processes > 1:
            print(f"segzoo: {summary.describe()}")
        if summary.failed:
            print(f"segzoo: error: {summary.failed} of {total} files were not segmented (see above)", file=sys.stderr)
    return 1 if summary.failed else 0


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "predict",
        help="segment images and folders and write PNGs: colored overlays or indexed labels (torchrun: sharded)",
    )
    p.add_argument("images", nargs="*", help="image files or folders (default: the sample image shipped with segzoo)")
    p.add_argument("-m", "--model", default=DEFAULT_MODEL, help=f"registered name or alias (default {DEFAULT_MODEL})")
    add_checkpoint(p)
    p.add_argument(
        "-o",
        "--out",
        help="output PNG for one image, else a folder; folders' trees are mirrored in it (default: the current folder)",
    )
    p.add_argument(
        "--output",
        choices=["overlay", "labels"],
        help="overlay: image with colored classes and a legend; labels: indexed PNG with the dataset palette "
        "(default: labels when a folder is among the inputs, else overlay)",
    )
    p.add_argument(
        "--recursive",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="take the images of folders' subfolders too (default); --no-recursive: only the folders' own",
    )
    p.add_argument(
        "--workers",
        type=non_negative_int,
        default=2,
        metavar="N",
        help="processes that decode and resize images ahead of the model (default 2; 0: none)",
    )
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="leave images whose outputs exist alone: run a killed job again to finish it",
    )
    p.add_argument(
        "--save-scores",
        action="store_true",
        help="also write each image's class probabilities, (classes, H, W) float16, as <stem>_<model>_scores.npz",
    )
    p.add_argument("--summary", metavar="CSV", help="write a table of each image's class areas (pixels, share)")
    add_inference(p)
    p.add_argument(
        "--fast",
        action="store_true",
        help="inference fast path: BatchNorm folded into convolutions, best memory format (same labels)",
    )
    add_quiet(p)
    p.set_defaults(run=_predict)
