"""``segzoo inspect``: what a checkpoint or archive holds, read without running or importing anything from it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from segzoo.weights.archive import (
    ArchiveLimits,
    choose_member,
    extract_member,
    list_members,
    member_problem,
    safe_members,
    scratch_folder,
)
from segzoo.weights.checkpoint import (
    ARCHIVE_FORMATS,
    CONTAINER_KEYS,
    load_checkpoint_object,
    safetensors_header,
    sniff_format,
)
from segzoo.weights.errors import CheckpointError, UnsafeCheckpointError
from segzoo.weights.keys import MAX_LINE_CHARS, TensorInfo, key_tree, prefix_summary, shortened

_CONTAINERS = {"state_dict": "mmcv/mmseg runner checkpoint", "model": "detectron2 checkpoint"}
MAX_MEMBERS_SHOWN = 50
MAX_ENTRIES_SHOWN = 20


def describe_file(path: str | Path) -> list[str]:
    """Lines describing ``path``: format, container, tensor count, key prefixes and a compact key/shape tree.

    However large the file's key set, the lines stay short and few: long
    lists are folded into counts and their first few items.
    """
    return _describe(Path(path), ArchiveLimits.from_env(), depth=1)


def _describe(path: Path, limits: ArchiveLimits, depth: int) -> list[str]:
    kind = sniff_format(path)
    lines = [f"{path}: {path.stat().st_size:,} bytes"]
    if kind in ARCHIVE_FORMATS:
        if depth > limits.depth:
            return lines + [
                f"format: {kind} archive",
                f"not extracted: archives nested more than {limits.depth} deep "
                f"(raise {limits.variable('depth')} for a file you trust)",
            ]
        return lines + _describe_archive(path, kind, limits, depth)
    if kind == "safetensors":
        return lines + ["format: safetensors"] + _describe_safetensors(path)
    fmt = "PyTorch zip (torch.save)" if kind == "torch-zip" else "PyTorch legacy pickle (torch.save)"
    try:
        obj = load_checkpoint_object(path)
    except UnsafeCheckpointError as err:  # reported, never loaded
        advice = "if you trust it, create_model(..., allow_unsafe_pickle=True) (--allow-unsafe-pickle) reads it"
        return lines + [f"format: {fmt}", f"not readable safely: {err}; {advice}"]
    except CheckpointError as err:
        return lines + [f"format: {fmt}", f"not readable: {err}"]
    return lines + [f"format: {fmt}"] + _describe_object(obj)


def _entries(mapping: Mapping, skip: object = None, quoted: bool = False) -> str:
    """``key (type), ...`` for the first few entries of ``mapping``, and how many more there are."""
    items = [
        f"{shortened(k if isinstance(k, str) and not quoted else repr(k))} ({type(v).__name__})"
        for k, v in mapping.items()
        if k != skip
    ]
    more = f", ... {len(items) - MAX_ENTRIES_SHOWN} more" if len(items) > MAX_ENTRIES_SHOWN else ""
    return ", ".join(items[:MAX_ENTRIES_SHOWN]) + more


def _describe_object(obj: object) -> list[str]:
    if isinstance(obj, Mapping):
        for key in CONTAINER_KEYS:
            if isinstance(obj.get(key), Mapping):
                return [
                    f"container: {_CONTAINERS[key]}, weights under {key!r}; also: {_entries(obj, key) or 'nothing'}",
                    *_describe_tensors(obj[key]),
                ]
        if obj and all(torch.is_tensor(v) for v in obj.values()):
            return ["container: bare state dict", *_describe_tensors(obj)]
        return [f"container: a dict with no state dict segzoo recognises; keys: {_entries(obj, quoted=True)}"]
    return [f"container: a {type(obj).__name__}, not a dict of tensors"]


def _describe_tensors(tensors: Mapping[object, object]) -> list[str]:
    odd_keys = [k for k in tensors if not isinstance(k, str)]
    odd_values = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor | TensorInfo)]
    problems = []
    if odd_keys:
        problems.append(
            f"not loadable: {len(odd_keys)} keys are not parameter names, e.g. {shortened(repr(odd_keys[0]))} "
            f"({type(odd_keys[0]).__name__})"
        )
    if odd_values:
        example = odd_values[0]
        problems.append(
            f"not loadable: {len(odd_values)} values are not tensors, e.g. {shortened(repr(example))}: "
            f"a {type(tensors[example]).__name__}"
        )
    named = {str(k): v for k, v in tensors.items()}
    counted = [TensorInfo.of(v) if torch.is_tensor(v) else v for v in named.values()]
    counted = [v for v in counted if isinstance(v, TensorInfo)]
    numel = sum(v.numel for v in counted)
    dtypes = sorted({v.dtype for v in counted})
    return [
        f"tensors: {len(named)} ({numel:,} values; dtypes {', '.join(dtypes)})",
        *problems,
        f"prefixes: {prefix_summary(named)}",
        "keys:",
        *(f"  {line}" for line in key_tree(named)),
    ]


def _describe_safetensors(path: Path) -> list[str]:
    """The tensors a safetensors header lists, by shape and dtype: nothing but the header is read."""
    header = safetensors_header(path)
    metadata = header.pop("__metadata__", None)
    tensors: dict[str, object] = {}
    for key, entry in header.items():
        try:
            tensors[key] = TensorInfo(
                tuple(int(n) for n in entry["shape"]), _DTYPES.get(entry["dtype"], entry["dtype"])
            )
        except (TypeError, KeyError, ValueError):
            tensors[key] = entry  # described by its type: not a tensor entry segzoo can read
    head = [shortened(f"metadata: {metadata}", MAX_LINE_CHARS)] if metadata else []
    return head + _describe_tensors(tensors)


# safetensors' dtype names, as torch names them.
_DTYPES = {
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F64": "float64",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def _describe_archive(path: Path, kind: str, limits: ArchiveLimits, depth: int) -> list[str]:
    lines = [f"format: {kind} archive"]
    try:
        members = list_members(path, limits)
    except CheckpointError as err:
        return lines + [f"not listed: {err}"]
    files = [m for m in members if m.isfile()]
    lines.append(f"members: {len(members)} ({len(files)} files, {sum(m.size for m in files):,} bytes unpacked)")
    for member in members[:MAX_MEMBERS_SHOWN]:
        problem = member_problem(member, limits)
        kind = "dir " if member.isdir() else "file" if member.isfile() else "other"
        name = shortened(member.name)
        lines.append(f"  {kind} {member.size:>14,}  {name}" + (f"  REFUSED: {problem}" if problem else ""))
    if len(members) > MAX_MEMBERS_SHOWN:
        lines.append(f"  ... {len(members) - MAX_MEMBERS_SHOWN} more")
    try:
        members = safe_members(path, limits)
        chosen = choose_member(path, members)
    except CheckpointError as err:
        return lines + [f"not extracted: {err}"]
    lines.append(f"checkpoint: {chosen.name} (the only one)")
    with scratch_folder() as scratch:
        try:
            inner = _describe(extract_member(path, chosen, scratch, limits), limits, depth + 1)
        except CheckpointError as err:
            return lines + [f"not extracted: {err}"]
    return lines + [f"  {line}" for line in inner[1:]]
