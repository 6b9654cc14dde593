"""Compact views of a state dict's keys: top-level prefixes, and a tree with repeated blocks folded."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import torch

MAX_TREE_LINES = 200
MAX_PREFIXES_SHOWN = 12
MAX_LEAVES_ON_A_LINE = 16
MAX_LINE_CHARS = 300
MAX_KEY_DEPTH = 16  # parts of a key the tree nests; the rest stays one name


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's shape and dtype, as a file's header lists them, without its values."""

    shape: tuple[int, ...]
    dtype: str  # as torch names it, without ``torch.``: ``float32``

    @classmethod
    def of(cls, tensor: torch.Tensor) -> TensorInfo:
        return cls(tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def shortened(text: str, limit: int = 120) -> str:
    """``text``, cut to ``limit`` characters with a mark saying how much was left out."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit:,} more characters)"


def prefix_summary(tensors: Mapping[str, object], depth: int = 1) -> str:
    """``backbone.* (230 tensors), decode_head.* (14 tensors)``: the key prefixes of ``depth`` parts, counted;
    past the first few, only how many more there are."""
    counts = Counter(".".join(key.split(".")[:depth]) for key in tensors)
    shown = [
        f"{shortened(prefix)}.* ({n} tensors)" if n > 1 or prefix not in tensors else f"{shortened(prefix)} (1 tensor)"
        for prefix, n in list(counts.items())[:MAX_PREFIXES_SHOWN]
    ]
    if len(counts) > MAX_PREFIXES_SHOWN:
        rest = len(counts) - MAX_PREFIXES_SHOWN
        shown.append(f"... {rest:,} more prefixes ({sum(list(counts.values())[MAX_PREFIXES_SHOWN:]):,} tensors)")
    return ", ".join(shown)


def _describe(value: object) -> str:
    """``(64, 3, 3, 3)``, with the dtype when it is not float32: ``() int64``."""
    if torch.is_tensor(value):
        value = TensorInfo.of(value)
    if not isinstance(value, TensorInfo):
        return type(value).__name__
    shape = "(" + ", ".join(map(str, value.shape)) + ("," if len(value.shape) == 1 else "") + ")"
    return shape if value.dtype == "float32" else f"{shape} {value.dtype}"


def _insert(tree: dict, parts: list[str], leaf: str) -> None:
    for part in parts[:-1]:
        child = tree.setdefault(part, {})
        if not isinstance(child, dict):  # a key that is both a tensor and a prefix
            child = tree[part] = {"": child}
        tree = child
    tree[parts[-1]] = leaf


def _signature(node: dict | str) -> str:
    if isinstance(node, str):
        return node
    return "{" + ",".join(f"{k}:{_signature(v)}" for k, v in node.items()) + "}"


def _ranges(indices: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2,5``."""
    spans, start = [], indices[0]
    for prev, cur in zip(indices, indices[1:] + [None]):
        if cur != prev + 1:
            spans.append(f"{start}-{prev}" if prev > start else f"{start}")
            start = cur
    return ",".join(spans)


def _folded(node: dict) -> list[tuple[str, dict | str]]:
    """Children of ``node``, runs of numbered children with the same structure folded into ``{0-11}``."""
    items: list[tuple[str, dict | str]] = []
    groups: dict[str, list[int]] = {}
    for name, child in node.items():
        if name.isdigit():
            groups.setdefault(_signature(child), []).append(int(name))
    emitted = set()
    for name, child in node.items():
        if not name.isdigit():
            items.append((name, child))
            continue
        signature = _signature(child)
        indices = groups[signature]
        if len(indices) == 1:
            items.append((name, child))
        elif signature not in emitted:
            emitted.add(signature)
            items.append((f"{{{_ranges(indices)}}}", child))
    return items


def _render(node: dict, indent: int, lines: list[str], max_lines: int) -> None:
    for name, child in _folded(node):
        path = name
        while isinstance(child, dict) and len(child) == 1 and next(iter(child)) != "":  # one-child chains on one line
            ((sub, child),) = child.items()
            path = f"{path}.{sub}"
        if len(lines) > max_lines:  # the caller cuts the list here: what follows is never shown
            return
        if isinstance(child, str):
            lines.append(shortened(f"{'  ' * indent}{path}: {child}", MAX_LINE_CHARS))
        elif len(child) <= MAX_LEAVES_ON_A_LINE and all(isinstance(leaf, str) for leaf in child.values()):
            line = f"{'  ' * indent}{path}: " + ", ".join(f"{k} {v}" for k, v in child.items())  # a layer's tensors
            lines.append(shortened(line, MAX_LINE_CHARS))
        else:
            lines.append(shortened(f"{'  ' * indent}{path}.", MAX_LINE_CHARS))
            _render(child, indent + 1, lines, max_lines)


def key_tree(tensors: Mapping[str, object], max_lines: int = MAX_TREE_LINES) -> list[str]:
    """Indented lines, one per key or prefix, with shapes and dtypes; numbered blocks of equal structure fold."""
    tree: dict = {}
    for key, value in tensors.items():
        _insert(tree, key.split(".", MAX_KEY_DEPTH), _describe(value))
    lines: list[str] = []
    _render(tree, 0, lines, max_lines)
    if len(lines) > max_lines:
        lines = lines[:max_lines] + ["... (more keys; the prefixes above count them all)"]
    return lines
