"""Pinned checksums of weight files, kept in ``pins.json`` and written by ``segzoo pin``.

The source READMEs publish no hashes, so they are recorded here by the
maintainers after a verified download: ``{url: {"sha256": ..., "size": ...}}``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from segzoo.zoo.records import ModelInfo, WeightSource

PINS_FILE = Path(__file__).with_name("pins.json")


def checkout_pins_file() -> Path | None:
    """:data:`PINS_FILE` when segzoo runs from a source checkout (``pip install -e .``), else ``None``.

    Pins belong in the source tree, where they are committed and ship with the
    next release; written into an installed copy they would be lost on the next install.
    """
    root = PINS_FILE.parents[2]
    return PINS_FILE if (root / "pyproject.toml").is_file() and (root / ".git").exists() else None


def read_pins(path: Path = PINS_FILE) -> dict[str, dict[str, object]]:
    return json.loads(path.read_text()) if path.is_file() else {}


def write_pin(url: str, sha256: str, size: int, path: Path = PINS_FILE) -> None:
    """Record ``url``'s checksum and size, rewriting the file atomically in sorted order."""
    pins = read_pins(path)
    pins[url] = {"sha256": sha256, "size": size}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(dict(sorted(pins.items())), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def apply_pins(entries: Iterable[ModelInfo], pins: dict[str, dict[str, object]]) -> tuple[ModelInfo, ...]:
    """The entries with each weight source's sha256 and size (the ImageNet backbone's too) filled in from ``pins``."""

    def pinned_source(source: WeightSource) -> WeightSource:
        if source.url not in pins:
            return source
        return dataclasses.replace(source, sha256=pins[source.url]["sha256"], size=pins[source.url]["size"])

    def pinned(info: ModelInfo) -> ModelInfo:
        backbone = info.pretrained_backbone
        return dataclasses.replace(
            info,
            weights=tuple(pinned_source(w) for w in info.weights),
            pretrained_backbone=pinned_source(backbone) if backbone is not None else None,
        )

    return tuple(pinned(info) for info in entries)
