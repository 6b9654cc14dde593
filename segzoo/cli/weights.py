"""``segzoo download|pin|verify|convert|inspect``: weight files, their checksums and what they hold."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from segzoo.cli.options import add_checkpoint, add_names_or_all, add_num_classes, add_quiet, load_model, progress

if TYPE_CHECKING:
    from segzoo.mirror import FileKind


def _names(args: argparse.Namespace) -> list[str]:
    import segzoo

    return segzoo.list_models() if args.all else [segzoo.model_info(name).name for name in args.models]


def _report_manual(manual: dict[str, str]) -> None:
    for name, instructions in manual.items():
        print(f"{name}: manual download needed. {instructions}")


def _file_kind(args: argparse.Namespace) -> FileKind:
    from segzoo.mirror import IMAGENET_BACKBONES, SEGMENTATION_WEIGHTS

    return IMAGENET_BACKBONES if args.imagenet else SEGMENTATION_WEIGHTS


def _download(args: argparse.Namespace) -> int:
    from segzoo.mirror import download_to_folder

    manifest, skipped = download_to_folder(_names(args), Path(args.to), progress=progress(args), kind=_file_kind(args))
    _report_manual(skipped)
    print(f"wrote {manifest}")
    return 1 if skipped and args.imagenet else 0  # share pages are expected among the segmentation weights


def _pin(args: argparse.Namespace) -> int:
    from segzoo.mirror import pin
    from segzoo.zoo.pins import PINS_FILE

    pins_file = Path(args.pins_file or PINS_FILE)
    pinned, skipped = pin(_names(args), pins_file, progress=progress(args), kind=_file_kind(args))
    for name, sha256 in pinned.items():
        print(f"{name}: sha256 {sha256}")
    if args.imagenet:
        for url, why in skipped.items():
            print(f"{url}: not pinned. {why}")
    else:
        _report_manual(skipped)
    if skipped:
        print(
            f"segzoo: error: {len(skipped)} entries are not pinned; fetch their files as said above and pin again",
            file=sys.stderr,
        )
    return 1 if skipped else 0


def _verify(args: argparse.Namespace) -> int:
    import segzoo
    from segzoo.weights.verify import verify_cache

    sources = [w for name in _names(args) for w in segzoo.model_info(name).weights]
    checks = verify_cache(sources, all_recorded=args.all, remove=not args.keep)
    for check in checks:
        if check.status != "not cached" or not args.all:
            print(f"{check.status:>10}  {check.path}" + (f"  ({check.detail})" if check.detail else ""))
    bad = [c for c in checks if c.status == "mismatch"]
    if bad:
        print(f"segzoo: error: {len(bad)} cached files do not match their checksums", file=sys.stderr)
    return 1 if bad else 0


def _convert(args: argparse.Namespace) -> int:
    from segzoo.hub import save_pretrained

    model = load_model(args, args.model)
    print(f"wrote {save_pretrained(model, args.out)}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from segzoo.weights.inspect import describe_file

    print("\n".join(describe_file(args.file)))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("download", help="fill a folder with weights and a manifest, to serve as SEGZOO_MIRROR")
    add_names_or_all(p)
    p.add_argument("--to", required=True, help="destination folder")
    p.add_argument(
        "--imagenet",
        action="store_true",
        help="the ImageNet backbone files training starts from, instead of the segmentation weights",
    )
    add_quiet(p)
    p.set_defaults(run=_download)

    p = commands.add_parser("pin", help="(maintainers) record verified sha256 and size in the registry's pins")
    add_names_or_all(p)
    p.add_argument("--imagenet", action="store_true", help="pin the ImageNet backbone files instead")
    p.add_argument("--pins-file", help="pins file to update (default: the package's zoo/pins.json)")
    add_quiet(p)
    p.set_defaults(run=_pin)

    p = commands.add_parser("verify", help="re-hash cached weights against pins and recorded checksums")
    add_names_or_all(p)
    p.add_argument("--keep", action="store_true", help="only report files that do not match; do not remove them")
    p.set_defaults(run=_verify)

    p = commands.add_parser("convert", help="write an original checkpoint in segzoo's native layout")
    p.add_argument("model", help="registered name or alias")
    add_checkpoint(p, required=True)
    add_num_classes(p)
    p.add_argument("--out", required=True, help="folder for model.safetensors, config.json and README.md")
    add_quiet(p)
    p.set_defaults(run=_convert)

    p = commands.add_parser("inspect", help="show what a checkpoint or archive holds, without running any of it")
    p.add_argument("file", help="a .pth, .safetensors, .tar or .zip file")
    p.set_defaults(run=_inspect)
