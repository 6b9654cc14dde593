"""The ``segzoo`` command: list and describe models, segment images, evaluate, manage weights and datasets."""
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


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def _image_files(inputs: list[str]) -> list[Path]:
    """The images named on the command line; folders contribute their image files, sorted."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"no such image or folder: {item}")
    if not files:
        raise FileNotFoundError(f"no images found in {', '.join(inputs)}")
    return files


def _predict(args: argparse.Namespace) -> int:
    import segzoo
    from segzoo.datasets import dataset_metadata
    from segzoo.inference import load_image
    from segzoo.visualize import indexed_labels, render_overlay

    files = _image_files(args.images) if args.images else [sample_image_path()]
    model = segzoo.create_model(args.model, pretrained=args.checkpoint is None, checkpoint_path=args.checkpoint)
    class_names, palette = dataset_metadata(model.info.dataset)
    out = Path(args.out) if args.out else Path.cwd()
    single_file = len(files) == 1 and out.suffix.lower() == ".png"
    if not single_file:
        out.mkdir(parents=True, exist_ok=True)
    for path in files:
        image = load_image(path)
        labels = segzoo.predict(
            model, image, mode=args.mode, aug_test=args.aug_test, device=args.device, amp=args.amp
        ).labels
        suffix = "" if args.output == "overlay" else "_labels"
        target = out if single_file else out / f"{path.stem}_{model.info.name}{suffix}.png"
        if args.output == "overlay":
            render_overlay(image, labels, class_names, palette).save(target)
        else:
            indexed_labels(labels, palette).save(target)
        print(f"wrote {target}")
    return 0


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
        model = segzoo.create_model(args.model, pretrained=args.checkpoint is None, checkpoint_path=args.checkpoint)
        dataset = open_dataset(model.info.dataset, args.data_root, args.split)
        result = evaluate(
            model.to(device), dataset, mode=args.mode, aug_test=args.aug_test, limit=args.limit,
            batch_size=args.batch_size, amp=args.amp, progress=False if args.quiet else None,
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
    written = prepare(args.root, progress=False if args.quiet else None)
    print(f"wrote {written} label files under {args.root}")
    return 0


def _download(args: argparse.Namespace) -> int:
    import segzoo
    from segzoo.mirror import download_to_folder

    names = segzoo.list_models() if args.all else args.models
    print(f"wrote {download_to_folder(names, Path(args.to), progress=False if args.quiet else None)}")
    return 0


def _pin(args: argparse.Namespace) -> int:
    import segzoo
    from segzoo.mirror import pin
    from segzoo.zoo.pins import PINS_FILE

    names = segzoo.list_models() if args.all else args.models
    for name, sha256 in pin(names, Path(args.pins_file or PINS_FILE), progress=False if args.quiet else None).items():
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

    p = commands.add_parser("predict", help="segment images and write PNGs: a colored overlay or indexed labels")
    p.add_argument("images", nargs="*", help="image files or folders (default: the sample image shipped with segzoo)")
    p.add_argument("-m", "--model", default=DEFAULT_MODEL, help=f"registered name or alias (default {DEFAULT_MODEL})")
    p.add_argument("-c", "--checkpoint", help="local checkpoint instead of downloading the published weights")
    p.add_argument("-o", "--out", help="output PNG for one image, else a folder (default: the current folder)")
    p.add_argument("--output", choices=["overlay", "labels"], default="overlay",
                   help="overlay: image with colored classes and a legend; labels: indexed PNG with the dataset palette")
    p.add_argument("--mode", choices=["whole", "slide"], help="inference mode (default: the entry's)")
    p.add_argument("--aug-test", action="store_true", help="multi-scale + flip test as the upstream aug-test")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--amp", choices=["bf16", "fp16"], help="run under autocast with this dtype")
    p.set_defaults(run=_predict)

    p = commands.add_parser("eval", help="measure a model's metrics on its dataset, next to the reported ones")
    p.add_argument("model", help="registered name or alias")
    p.add_argument("--data-root", required=True, help="dataset folder in its standard layout")
    p.add_argument("--split", default="val", help="dataset split (default val)")
    p.add_argument("-c", "--checkpoint", help="local checkpoint instead of downloading the published weights")
    p.add_argument("--mode", choices=["whole", "slide"], help="inference mode (default: the entry's)")
    p.add_argument("--aug-test", action="store_true", help="multi-scale + flip test as the upstream aug-test")
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (same-sized images only)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--amp", choices=["bf16", "fp16"], help="run under autocast with this dtype")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--save-predictions", help="folder for the predicted label maps (indexed PNGs)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_eval)

    p = commands.add_parser("prepare", help="derive the label files a dataset's evaluation reads (idempotent)")
    p.add_argument("dataset", choices=["cityscapes", "coco-stuff54"])
    p.add_argument("root", help="dataset root folder")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_prepare)

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
    from segzoo.datasets.folders import DatasetError
    from segzoo.registry import UnknownModelError
    from segzoo.weights import WeightsError

    try:
        return args.run(args)
    except (UnknownModelError, WeightsError, FileNotFoundError, DatasetError) as err:
        print(f"segzoo: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
