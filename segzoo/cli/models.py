"""``segzoo list`` and ``segzoo info``: what the registry holds."""

from __future__ import annotations

import argparse


def _list(args: argparse.Namespace) -> int:
    import sys

    import segzoo

    names = segzoo.list_models(args.pattern)
    for name in names:
        print(f"{name:32s} {segzoo.model_info(name).summary}")
    if not names:
        print(f"segzoo: error: no registered model matches {args.pattern!r} (see 'segzoo list')", file=sys.stderr)
    return 0 if names else 1


def _info(args: argparse.Namespace) -> int:
    import json

    import segzoo
    from segzoo.zoo.records import to_plain

    print(json.dumps(to_plain(segzoo.model_info(args.model)), indent=2))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("list", help="list registered models")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'moganet_*_fpn_*'")
    p.set_defaults(run=_list)

    p = commands.add_parser("info", help="print a model's record as JSON")
    p.add_argument("model")
    p.set_defaults(run=_info)
