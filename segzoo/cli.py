"""The ``segzoo`` command: list and describe models, segment an image."""
from __future__ import annotations

import argparse
import logging
import sys
from importlib import resources
from pathlib import Path

DEFAULT_MODEL = "moganet_s_fpn_ade20k"


def sample_image_path() -> Path:
    """The CC0 sample image that ships with segzoo (see ``segzoo/assets/README.md``)."""
    return Path(str(resources.files("segzoo") / "assets" / "sample.png"))


def _list(args: argparse.Namespace) -> int:
    import segzoo

    for name in segzoo.list_models(args.pattern):
        print(f"{name:32s} {segzoo.model_info(name).summary}")
    return 0


def _info(args: argparse.Namespace) -> int:
    import json

    import segzoo
    from segzoo.zoo.records import to_plain

    print(json.dumps(to_plain(segzoo.model_info(args.model)), indent=2))
    return 0


def _predict(args: argparse.Namespace) -> int:
    import segzoo
    from segzoo.datasets import dataset_metadata
    from segzoo.inference import load_image, predict_whole
    from segzoo.visualize import render_overlay

    image_path = Path(args.image) if args.image else sample_image_path()
    model = segzoo.create_model(args.model, pretrained=args.checkpoint is None, checkpoint_path=args.checkpoint)
    image = load_image(image_path)
    labels = predict_whole(model, image, device=args.device)
    class_names, palette = dataset_metadata(model.info.dataset)
    out = Path(args.out) if args.out else Path(f"{image_path.stem}_{model.info.name}.png")
    render_overlay(image, labels, class_names, palette).save(out)
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segzoo", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (downloads, cache hits)")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("list", help="list registered models")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'moganet_*_fpn_*'")
    p.set_defaults(run=_list)

    p = commands.add_parser("info", help="print a model's record as JSON")
    p.add_argument("model")
    p.set_defaults(run=_info)

    p = commands.add_parser("predict", help="segment an image and write a PNG with a colored class overlay")
    p.add_argument("image", nargs="?", help="image file (default: the sample image shipped with segzoo)")
    p.add_argument("-m", "--model", default=DEFAULT_MODEL, help=f"registered name or alias (default {DEFAULT_MODEL})")
    p.add_argument("-c", "--checkpoint", help="local checkpoint instead of downloading the published weights")
    p.add_argument("-o", "--out", help="output PNG (default: <image>_<model>.png in the current folder)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.set_defaults(run=_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    from segzoo.registry import UnknownModelError
    from segzoo.weights import CheckpointError, ChecksumMismatchError, WeightsDownloadError

    try:
        return args.run(args)
    except (UnknownModelError, CheckpointError, ChecksumMismatchError, WeightsDownloadError) as err:
        print(f"segzoo: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
