"""``segzoo download|pin|verify|convert|inspect``: weight files, their checksums and what they hold."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from segzoo.cli.options import add_checkpoint, add_names_or_all, add_num_classes, add_quiet, load_model, progress

if TYPE_CHECKING:
    from segzoo.mirror import FileKind, Outcome


def _names(args: argparse.Namespace) -> list[str]:
    import segzoo

    return segzoo.list_models() if args.all else [segzoo.model_info(name).name for name in args.models]


def _report(outcome: Outcome, what_is_missing: str) -> int:
    """Print each file set aside and a summary line; the exit status: 1 if any file was set aside."""
    from segzoo.weights.cache import cache_dir

    for item in outcome.unfinished:
        source = item.source
        if source.kind == "manual":
            code = f" (extraction code {source.access_code})" if source.access_code else ""
            print(
                f"{item.key}: share page, needs a person: open {source.url} in a browser{code}, download "
                f"{source.filename} and save it as {cache_dir() / source.filename}, then run this command again"
            )
            if not item.needs_a_person:
                print(f"{item.key}: and it failed: {_first_line(item.reason)}")
        elif item.needs_a_person:
            print(f"{item.key}: needs a person: {' '.join(item.reason.split())}")
        else:
            print(f"{item.key}: failed: {_first_line(item.reason)}")
    if not outcome.unfinished:
        return 0
    by_hand = sum(item.source.kind == "manual" or item.needs_a_person for item in outcome.unfinished)
    total = len(outcome.done) + len(outcome.unfinished)
    print(
        f"segzoo: error: {len(outcome.unfinished)} of {total} files {what_is_missing}: {by_hand} need a person, "
        f"{len(outcome.unfinished) - by_hand} failed (each listed above)",
        file=sys.stderr,
    )
    return 1


def _first_line(reason: str) -> str:
    return reason.splitlines()[0] if reason else reason


def _file_kind(args: argparse.Namespace) -> FileKind:
    from segzoo.mirror import IMAGENET_BACKBONES, SEGMENTATION_WEIGHTS

    return IMAGENET_BACKBONES if args.imagenet else SEGMENTATION_WEIGHTS


def _download(args: argparse.Namespace) -> int:
    from segzoo.mirror import download_to_folder
    from segzoo.weights.fetch import MANIFEST_NAME

    folder = Path(args.to)
    outcome = download_to_folder(_names(args), folder, progress=progress(args), kind=_file_kind(args))
    print(f"wrote {folder / MANIFEST_NAME} ({len(outcome.done)} files)")
    return _report(outcome, f"are not in {folder}")


def _pin(args: argparse.Namespace) -> int:
    from segzoo.mirror import pin
    from segzoo.zoo.pins import PINS_FILE, checkout_pins_file

    pins_file = Path(args.pins_file) if args.pins_file else checkout_pins_file()
    if pins_file is None:
        raise ValueError(
            f"segzoo runs from an installed copy ({PINS_FILE.parent}), not from a source checkout, where pins "
            f"would be lost on the next install: run `segzoo pin` in a git checkout of segzoo installed with "
            f"`pip install -e .`, or give --pins-file FILE"
        )
    outcome = pin(_names(args), pins_file, progress=progress(args), kind=_file_kind(args))
    for key, sha256 in outcome.done.items():
        print(f"{key}: sha256 {sha256}")
    return _report(outcome, f"are not pinned in {pins_file}")


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
    p.add_argument(
        "--pins-file", help="pins file to update (default: zoo/pins.json of the source checkout segzoo runs from)"
    )
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
