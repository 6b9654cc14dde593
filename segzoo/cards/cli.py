"""``python -m segzoo.cards [--write]``: list, or write, the generated files that are stale."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path

from segzoo.cards.render import expected_files


def main(
    generate: Callable[[Path], Mapping[Path, str]] = expected_files,
    description: str = "Regenerate model cards and the README model and export tables.",
) -> None:
    """List the stale files among those ``generate(root)`` gives, or write them (``--write``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root (default: cwd)")
    parser.add_argument("--write", action="store_true", help="write the files (default: list stale ones)")
    args = parser.parse_args()
    for path, text in generate(args.root).items():
        if path.is_file() and path.read_text() == text:
            continue
        if args.write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        print(f"{'wrote' if args.write else 'stale'}: {path}")
