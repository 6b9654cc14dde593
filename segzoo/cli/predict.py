"""``segzoo predict``: segment images and write PNGs, every readable image even when some are not."""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from segzoo.cli.options import add_checkpoint, add_inference, add_quiet, load_model

DEFAULT_MODEL = "moganet_s_fpn_ade20k"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def sample_image_path() -> Path:
    """The CC0 sample image that ships with segzoo (see ``segzoo/assets/README.md``)."""
    return Path(str(resources.files("segzoo") / "assets" / "sample.png"))


def _image_files(inputs: list[str]) -> list[Path]:
    """The images named on the command line; folders contribute their image files, sorted.

    A link to nothing among a folder's images stays in the list, for :func:`_read` to report.
    """
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(
                p
                for p in item.iterdir()
                if p.suffix.lower() in IMAGE_SUFFIXES and (p.is_file() or p.is_symlink() and not p.exists())
            )
        elif item.is_file() or item.is_symlink():
            files.append(item)
        else:
            raise FileNotFoundError(f"no such image or folder: {item}")
    if not files:
        raise FileNotFoundError(f"no images found in {', '.join(inputs)}")
    return files


def _read(path: Path, pipeline):
    """The image at ``path`` read as ``pipeline``'s upstream reader did, or ``None`` after saying why it cannot be."""
    from PIL import Image, UnidentifiedImageError

    from segzoo.inference import load_image

    if path.is_symlink() and not path.exists():
        print(f"segzoo: error: {path}: a link to {path.readlink()}, which does not exist", file=sys.stderr)
        return None
    try:
        return load_image(path, pipeline)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        reason = str(err).replace(str(path), "").strip(" :'") or type(err).__name__
        print(f"segzoo: error: {path}: not an image ({reason})", file=sys.stderr)
        return None


def _segment(path: Path, image, model, args: argparse.Namespace):
    """The label map of ``image`` (read from ``path``), or ``None`` after saying why the model cannot take it."""
    import segzoo

    try:
        return segzoo.predict(
            model,
            image,
            mode=args.mode,
            aug_test=args.aug_test,
            device=args.device,
            amp=args.amp,
            precision=args.precision,
        )
    except ValueError as err:  # e.g. too elongated for the entry's resize, or too small for the model
        print(f"segzoo: error: {path}: {err}", file=sys.stderr)
        return None


def _predict(args: argparse.Namespace) -> int:
    import segzoo
    from segzoo.datasets import dataset_metadata
    from segzoo.inference.predict import PRECISIONS
    from segzoo.visualize import indexed_labels, render_overlay

    files = _image_files(args.images) if args.images else [sample_image_path()]
    model = load_model(args, args.model)
    if args.fast or args.precision != "fp32":
        dtype = PRECISIONS[args.precision]
        model = segzoo.optimize_for_inference(model.to(args.device), inplace=True, dtype=dtype)
    class_names, palette = dataset_metadata(model.info.dataset)
    out = Path(args.out) if args.out else Path.cwd()
    single_file = len(files) == 1 and out.suffix.lower() == ".png"
    if not single_file:
        out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in files:
        image = _read(path, model.info.test_pipeline)
        prediction = None if image is None else _segment(path, image, model, args)
        if prediction is None:
            failed += 1
            continue
        labels = prediction.labels
        suffix = "" if args.output == "overlay" else "_labels"
        target = out if single_file else out / f"{path.stem}_{model.info.name}{suffix}.png"
        if args.output == "overlay":
            render_overlay(image, labels, class_names, palette).save(target)
        else:
            indexed_labels(labels, palette).save(target)
        print(f"wrote {target}")
    if failed:
        print(f"segzoo: error: {failed} of {len(files)} files were not segmented (see above)", file=sys.stderr)
    return 1 if failed else 0


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("predict", help="segment images and write PNGs: a colored overlay or indexed labels")
    p.add_argument("images", nargs="*", help="image files or folders (default: the sample image shipped with segzoo)")
    p.add_argument("-m", "--model", default=DEFAULT_MODEL, help=f"registered name or alias (default {DEFAULT_MODEL})")
    add_checkpoint(p)
    p.add_argument("-o", "--out", help="output PNG for one image, else a folder (default: the current folder)")
    p.add_argument(
        "--output",
        choices=["overlay", "labels"],
        default="overlay",
        help="overlay: image with colored classes and a legend; labels: indexed PNG with the dataset palette",
    )
    add_inference(p)
    p.add_argument(
        "--fast",
        action="store_true",
        help="inference fast path: BatchNorm folded into convolutions, best memory format (same labels)",
    )
    add_quiet(p)
    p.set_defaults(run=_predict)
