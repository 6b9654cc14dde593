"""``segzoo inspect``: what a checkpoint or archive holds, read without running or importing anything from it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open

from segzoo.weights.archive import (
    checkpoint_members,
    extracted_checkpoint,
    list_members,
    member_problem,
    safe_members,
)
from segzoo.weights.checkpoint import ARCHIVE_FORMATS, CONTAINER_KEYS, load_checkpoint_object, sniff_format
from segzoo.weights.errors import CheckpointError
from segzoo.weights.keys import key_tree, prefix_summary

_CONTAINERS = {"state_dict": "mmcv/mmseg runner checkpoint", "model": "detectron2 checkpoint"}


def describe_file(path: str | Path) -> list[str]:
    """Lines describing ``path``: format, container, tensor count, key prefixes and a compact key/shape tree."""
    path = Path(path)
    kind = sniff_format(path)
    lines = [f"{path}: {path.stat().st_size:,} bytes"]
    if kind in ARCHIVE_FORMATS:
        return lines + _describe_archive(path, kind)
    if kind == "safetensors":
        return lines + ["format: safetensors"] + _describe_safetensors(path)
    try:
        obj = load_checkpoint_object(path)
    except CheckpointError as err:  # e.g. a pickle that needs arbitrary objects: report, never load it
        return lines + ["format: PyTorch pickle (torch.save)", f"not readable safely: {err}"]
    fmt = "PyTorch zip (torch.save)" if kind == "torch-zip" else "PyTorch legacy pickle (torch.save)"
    return lines + [f"format: {fmt}"] + _describe_object(obj)


def _describe_object(obj: object) -> list[str]:
    if isinstance(obj, Mapping):
        for key in CONTAINER_KEYS:
            if isinstance(obj.get(key), Mapping):
                others = ", ".join(f"{k} ({type(v).__name__})" for k, v in obj.items() if k != key)
                return [
                    f"container: {_CONTAINERS[key]}, weights under {key!r}; also: {others or 'nothing'}",
                    *_describe_tensors(obj[key]),
                ]
        if obj and all(torch.is_tensor(v) for v in obj.values()):
            return ["container: bare state dict", *_describe_tensors(obj)]
        listed = ", ".join(f"{k!r} ({type(v).__name__})" for k, v in list(obj.items())[:20])
        return [f"container: a dict with no state dict segzoo recognises; keys: {listed}"]
    return [f"container: a {type(obj).__name__}, not a dict of tensors"]


def _describe_tensors(tensors: Mapping[str, object]) -> list[str]:
    counted = [v for v in tensors.values() if torch.is_tensor(v)]
    numel = sum(v.numel() for v in counted)
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in counted})
    return [
        f"tensors: {len(tensors)} ({numel:,} values; dtypes {', '.join(dtypes)})",
        f"prefixes: {prefix_summary(tensors)}",
        "keys:",
        *(f"  {line}" for line in key_tree(tensors)),
    ]


def _describe_safetensors(path: Path) -> list[str]:
    with safe_open(path, framework="pt") as f:  # reads the header only
        metadata = f.metadata() or {}
        slices = {key: f.get_slice(key) for key in f.keys()}
        tensors = {
            key: torch.empty(s.get_shape(), dtype=_DTYPES.get(s.get_dtype(), torch.float32), device="meta")
            for key, s in slices.items()
        }
    head = [f"metadata: {metadata}"] if metadata else []
    return head + _describe_tensors(tensors)


_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _describe_archive(path: Path, kind: str) -> list[str]:
    lines = [f"format: {kind} archive"]
    try:
        members = list_members(path)
    except CheckpointError as err:
        return lines + [f"not listed: {err}"]
    files = [m for m in members if m.isfile()]
    lines.append(f"members: {len(members)} ({len(files)} files, {sum(m.size for m in files):,} bytes unpacked)")
    for member in members[:50]:
        problem = member_problem(member)
        kind = "dir " if member.isdir() else "file" if member.isfile() else "other"
        lines.append(f"  {kind} {member.size:>14,}  {member.name}" + (f"  REFUSED: {problem}" if problem else ""))
    if len(members) > 50:
        lines.append(f"  ... {len(members) - 50} more")
    try:
        candidates = checkpoint_members(safe_members(path))
    except CheckpointError as err:
        return lines + [f"not extracted: {err}"]
    if not candidates:
        return lines + ["no checkpoint-like member"]
    chosen = candidates[0]
    which = f"the largest of {len(candidates)}" if len(candidates) > 1 else "the only one"
    lines.append(f"checkpoint: {chosen.name} ({which})")
    with extracted_checkpoint(path, chosen.name) as checkpoint:
        inner = describe_file(checkpoint)
    return lines + [f"  {line}" for line in inner[1:]]
