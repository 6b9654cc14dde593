"""Compact views of a state dict's keys: top-level prefixes, and a tree with repeated blocks folded."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import torch

MAX_TREE_LINES = 200


def prefix_summary(tensors: Mapping[str, torch.Tensor], depth: int = 1) -> str:
    """``backbone.* (230 tensors), decode_head.* (14 tensors)``: the key prefixes of ``depth`` parts, counted."""
    counts = Counter(".".join(key.split(".")[:depth]) for key in tensors)
    return ", ".join(
        f"{prefix}.* ({n} tensors)" if n > 1 or prefix not in tensors else f"{prefix} (1 tensor)"
        for prefix, n in counts.items()
    )


def _describe(value: object) -> str:
    """``(64, 3, 3, 3)``, with the dtype when it is not float32: ``() int64``."""
    if not torch.is_tensor(value):
        return type(value).__name__
    shape = "(" + ", ".join(map(str, value.shape)) + ("," if value.ndim == 1 else "") + ")"
    return shape if value.dtype == torch.float32 else f"{shape} {str(value.dtype).removeprefix('torch.')}"


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


def _render(node: dict, indent: int, lines: list[str]) -> None:
    for name, child in _folded(node):
        path = name
        while isinstance(child, dict) and len(child) == 1 and next(iter(child)) != "":  # one-child chains on one line
            ((sub, child),) = child.items()
            path = f"{path}.{sub}"
        if isinstance(child, str):
            lines.append(f"{'  ' * indent}{path}: {child}")
        elif all(isinstance(leaf, str) for leaf in child.values()):  # a layer's tensors on one line
            lines.append(f"{'  ' * indent}{path}: " + ", ".join(f"{k} {v}" for k, v in child.items()))
        else:
            lines.append(f"{'  ' * indent}{path}.")
            _render(child, indent + 1, lines)


def key_tree(tensors: Mapping[str, object], max_lines: int = MAX_TREE_LINES) -> list[str]:
    """Indented lines, one per key or prefix, with shapes and dtypes; numbered blocks of equal structure fold."""
    tree: dict = {}
    for key, value in tensors.items():
        _insert(tree, key.split("."), _describe(value))
    lines: list[str] = []
    _render(tree, 0, lines)
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"... {len(lines) - max_lines} more lines"]
    return lines
