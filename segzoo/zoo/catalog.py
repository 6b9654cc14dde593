"""Names and records of the zoo's entries: listing, aliases, lookup with suggestions. Plain data, no torch.

:func:`segzoo.list_models` and :func:`segzoo.model_info` ask the catalog of the registered families (a family
registered later, e.g. a plug-in's, included); ``segzoo list`` and ``segzoo info`` ask :func:`zoo_catalog`, the
same entries read from the modules of this package, so that they answer without importing torch.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import importlib
import pkgutil
from collections.abc import Iterable
from dataclasses import dataclass

import segzoo.zoo
from segzoo.zoo.pins import apply_pins, read_pins
from segzoo.zoo.records import ModelInfo


class UnknownModelError(LookupError):
    """No registered model has this name; the message suggests close ones."""


def _alias_of(info: ModelInfo) -> str:
    """The name without its dataset suffix: ``moganet_s_fpn_ade20k`` -> ``moganet_s_fpn``."""
    return info.name.rsplit("_", 1)[0]


@dataclass(frozen=True)
class Catalog:
    """Every entry by name (with the maintainers' pinned hashes applied) and the unambiguous aliases."""

    by_name: dict[str, ModelInfo]
    aliases: dict[str, str]

    @classmethod
    def of(cls, entries: Iterable[ModelInfo]) -> Catalog:
        pinned = apply_pins(entries, read_pins())
        targets: dict[str, list[str]] = {}
        for info in pinned:
            targets.setdefault(_alias_of(info), []).append(info.name)
        aliases = {alias: names[0] for alias, names in targets.items() if len(names) == 1}
        return cls({info.name: info for info in pinned}, aliases)

    def names(self, pattern: str = "*", pretrained: bool = False) -> list[str]:
        """Sorted names matching the fnmatch ``pattern``; with ``pretrained``, only those with weights."""
        return sorted(
            name
            for name, info in self.by_name.items()
            if fnmatch.fnmatchcase(name, pattern) and (info.weights or not pretrained)
        )

    def resolve(self, name: str) -> str:
        """The entry's name for ``name`` or its alias; an unknown name suggests close ones."""
        if name in self.by_name:
            return name
        if name in self.aliases:
            return self.aliases[name]
        close = difflib.get_close_matches(name, [*self.by_name, *self.aliases], n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}{hint} (segzoo.list_models() lists all names)")

    def info(self, name: str) -> ModelInfo:
        return self.by_name[self.resolve(name)]


@functools.cache
def zoo_catalog() -> Catalog:
    """The catalog of the entries the modules of :mod:`segzoo.zoo` declare (their ``ENTRIES``)."""
    modules = (
        importlib.import_module(f"{segzoo.zoo.__name__}.{module.name}")
        for module in pkgutil.iter_modules(segzoo.zoo.__path__)
    )
    return Catalog.of(info for module in modules for info in getattr(module, "ENTRIES", ()))
