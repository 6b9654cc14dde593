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


def _download(args: argparse.Namespace) -> int:
    import segzoo
    from segzoo.mirror import download_to_folder

    names = segzoo.list_models() if args.all else args.models
    print(f"wrote {download_to_folder(names, Path(args.to), progress=not args.quiet and None)}")
    return 0


def _pin(args: argparse.Namespace) -> int:
    import segzoo
    from segzoo.mirror import pin
    from segzoo.zoo.pins import PINS_FILE

    names = segzoo.list_models() if args.all else args.models
    for name, sha256 in pin(names, Path(args.pins_file or PINS_FILE), progress=not args.quiet and None).items():
        print(f"{name}: sha256 {sha256}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    import segzoo
    from segzoo.hub import save_pretrained

    model = segzoo.create_model(args.model, checkpoint_path=args.checkpoint)
    print(f"wrote {save_pretrained(model, args.out)}")
    return 0


def _names_or_all(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="*", help="registered names or aliases")
    parser.add_argument("--all", action="store_true", help="every registered model")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


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

    p = commands.add_parser("download", help="fill a folder with weights and a manifest, to serve as SEGZOO_MIRROR")
    _names_or_all(p)
    p.add_argument("--to", required=True, help="destination folder")
    p.set_defaults(run=_download)

    p = commands.add_parser("pin", help="(maintainers) record verified sha256 and size in the registry's pins")
    _names_or_all(p)
    p.add_argument("--pins-file", help="pins file to update (default: the package's zoo/pins.json)")
    p.set_defaults(run=_pin)

    p = commands.add_parser("convert", help="write an original checkpoint in segzoo's native layout")
    p.add_argument("model", help="registered name or alias")
    p.add_argument("--checkpoint", required=True, help="the original checkpoint file")
    p.add_argument("--out", required=True, help="folder for model.safetensors, config.json and README.md")
    p.set_defaults(run=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "all", False) == bool(getattr(args, "models", [])) and hasattr(args, "models"):
        parser.error(f"{args.command}: name models or pass --all (not both)")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    from segzoo.registry import UnknownModelError
    from segzoo.weights import WeightsError

    try:
        return args.run(args)
    except (UnknownModelError, WeightsError) as err:
        print(f"segzoo: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
