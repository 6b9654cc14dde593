"""``segzoo list`` and ``segzoo info``: what the zoo holds, answered from its records without importing torch."""

from __future__ import annotations

import argparse
import json
import sys

from segzoo.zoo.catalog import zoo_catalog
from segzoo.zoo.records import to_plain


def _list(args: argparse.Namespace) -> int:
    catalog = zoo_catalog()
    names = catalog.names(args.pattern)
    for name in names:
        print(f"{name:32s} {catalog.by_name[name].summary}")
    if not names:
        print(f"segzoo: error: no registered model matches {args.pattern!r} (see 'segzoo list')", file=sys.stderr)
    return 0 if names else 1


def _info(args: argparse.Namespace) -> int:
    print(json.dumps(to_plain(zoo_catalog().info(args.model)), indent=2))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("list", help="list registered models")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'moganet_*_fpn_*'")
    p.set_defaults(run=_list)

    p = commands.add_parser("info", help="print a model's record as JSON")
    p.add_argument("model")
    p.set_defaults(run=_info)
