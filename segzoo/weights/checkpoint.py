"""Read checkpoint files without running untrusted code, find the state dict, load it strictly."""

from __future__ import annotations

import io
import json
import logging
import math
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np
import safetensors.torch
import torch
from torch import nn

from segzoo.weights.archive import ZIP_MAGIC, archive_kind, compression_of, extracted_checkpoint
from segzoo.weights.errors import CheckpointError, CheckpointMismatchError, UnsafeCheckpointError
from segzoo.weights.keys import prefix_summary

log = logging.getLogger(__name__)

# Published mmcv checkpoints keep evaluation scores as NumPy scalars in their meta data;
# rebuilding a NumPy scalar or dtype runs no user code, so these are the only globals allowed.
_NUMPY_SCALAR_GLOBALS = [
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
    (np._core.multiarray.scalar, "numpy._core.multiarray.scalar"),
    (np.dtype, "numpy.dtype"),
    *((type(np.dtype(t)), f"numpy.dtypes.{type(np.dtype(t)).__name__}") for t in ("f8", "f4", "i8", "i4")),
]

MAX_KEYS_SHOWN = 10
# Keys under which training frameworks store the weights: mmcv's runner ({"state_dict", "meta", "optimizer"})
# and detectron2's checkpointer and segzoo train ({"model", "optimizer", "scheduler", "iteration", ...}).
CONTAINER_KEYS = ("state_dict", "model")
# What sniff_format calls archives of files, whose checkpoint member read_state_dict extracts.
ARCHIVE_FORMATS = ("tar", "zip")
# A model's safetensors header lists its tensors in well under a megabyte; a longer one is not read.
MAX_SAFETENSORS_HEADER_BYTES = 4 << 20
# How much of a pickle is scanned for the Python objects it would import, to say why it cannot be read safely.
MAX_PICKLE_SCAN_BYTES = 64 << 20
# Modules whose objects a weights-only pickle names (torch's tensor rebuilders and storages, OrderedDict, the
# NumPy scalars of mmcv's meta data); any other is code segzoo does not import.
_PLAIN_MODULES = frozenset({"torch", "collections", "numpy", "_codecs"})
_MAX_REPR = 60


def sniff_format(path: Path) -> str:
    """What the bytes of ``path`` are: ``safetensors``, ``torch-zip``, ``pickle``, ``tar``, ``zip`` (an archive
    of files, not a ``torch.save`` zip) or a reason it is none.

    Anything else raises :class:`CheckpointError` with a message fit for the
    file at hand (missing, a folder, empty, text or a web page, other bytes).
    """
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file; pass the .pth or .safetensors file in it")
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), perhaps an interrupted download or copy; fetch it again")
    with open(path, "rb") as f:
        head = f.read(512)
    archive = archive_kind(path)  # by magic bytes: a file of zeros is not a tar, whatever tarfile says
    if archive is not None:
        return archive
    if head.startswith(ZIP_MAGIC):
        return "torch-zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) > 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        return "safetensors"
    compression = compression_of(head)
    if compression is not None:
        raise CheckpointError(
            f"{path} is a {compression}-compressed file but not a tar archive; decompress it and pass the file inside"
        )
    text = head.decode("utf-8", errors="replace")[:-1]  # the last character may be cut in two
    if "\ufffd" not in text and all(c.isprintable() or c.isspace() for c in text):
        start = text.lstrip()[:60].replace("\n", " ")
        kind = "a web page" if start.lower().startswith(("<!doctype html", "<html")) else "a text file"
        hint = " (a login or error page saved in place of the file?)" if kind == "a web page" else ""
        raise CheckpointError(f"{path} is {kind}{hint}, not a checkpoint: it starts with {start!r}")
    raise CheckpointError(
        f"{path} is not a checkpoint: its {size} bytes are neither a PyTorch file (zip or pickle) nor safetensors; "
        f"fetch it again or check that it is the right file"
    )


def load_checkpoint_object(path: str | Path, allow_unsafe_pickle: bool = False, mapped: bool = True) -> object:
    """The object a checkpoint file holds, read without running code unless ``allow_unsafe_pickle``.

    safetensors files are recognised by their content, whatever their suffix.
    A pickle that needs more than tensors and plain data raises
    :class:`UnsafeCheckpointError`; callers that offer the opt-in say how.
    ``mapped`` lets the tensors stay memory-mapped onto the file where the
    format allows it, which only a file nobody rewrites or truncates may do
    (segzoo's cache); otherwise they are read into memory the caller owns.
    """
    path = Path(path)
    kind = sniff_format(path)
    if kind in ARCHIVE_FORMATS:
        raise CheckpointError(f"{path} is a {kind} archive; read_state_dict finds the checkpoint inside it")
    if kind == "safetensors":
        return _read_safetensors(path, mapped)
    mmap = mapped and kind == "torch-zip"  # torch can map only its zip format
    try:
        with warnings.catch_warnings(record=True) as caught:  # torch's advice (pickle protocols...) is not for users
            warnings.simplefilter("always")
            if allow_unsafe_pickle:
                log.warning("unpickling %s without restrictions (allow_unsafe_pickle=True)", path)
                obj = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
            else:
                with torch.serialization.safe_globals(_NUMPY_SCALAR_GLOBALS):
                    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        for warning in caught:
            log.debug("%s: torch.load warned: %s", path, warning.message)
        return obj
    except pickle.UnpicklingError as err:
        raise _unpickling_error(path, kind, err) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        needed = _code_objects(path, kind)
        if needed:
            raise _unsafe(path, needed) from err
        raise CheckpointError(
            f"cannot read {path} as a PyTorch checkpoint (truncated or damaged?): {_first_line(err)}"
        ) from err


def _first_line(err: BaseException) -> str:
    return str(err).strip().split("\n", 1)[0]


def _unsafe(path: Path, needed: list[str]) -> UnsafeCheckpointError:
    listed = ", ".join(needed[:5]) + (" ..." if len(needed) > 5 else "")
    return UnsafeCheckpointError(
        f"{path} holds more than tensors and plain data (it needs the Python object {listed}), and "
        f"segzoo does not unpickle arbitrary objects, which could run code"
    )


def _unpickling_error(path: Path, kind: str, err: pickle.UnpicklingError) -> CheckpointError:
    """What a refused pickle needs: code (named), pickle features torch's safe reader lacks, or nothing (damaged)."""
    needed = re.search(r"GLOBAL (\S+)", str(err))
    objects = [needed.group(1)] if needed else _code_objects(path, kind)
    if objects:
        return _unsafe(path, objects)
    operand = re.search(r"Unsupported operand (\d+)", str(err))
    newer = operand and next((op for op in pickletools.opcodes if ord(op.code) == int(operand.group(1))), None)
    if newer and newer.proto >= 4:
        return UnsafeCheckpointError(
            f"{path} is a pickle of protocol {newer.proto} or later (opcode {newer.name}), which torch's safe reader "
            f"does not take; it names no Python object beyond tensors, but segzoo reads such a file only unsafely"
        )
    return CheckpointError(f"cannot read {path} as a PyTorch checkpoint (truncated or damaged?)")


def _code_objects(path: Path, kind: str) -> list[str]:
    """The Python objects outside torch, collections and NumPy that the pickles of ``path`` name (``data.pkl``
    of a torch zip), found by reading their opcodes, never by running them."""
    try:
        if kind == "torch-zip":
            with zipfile.ZipFile(path) as zf:
                name = next((n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")), None)
                if name is None:
                    return []
                with zf.open(name) as f:
                    data = f.read(MAX_PICKLE_SCAN_BYTES)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_PICKLE_SCAN_BYTES)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return []
    return [name for name in _pickle_globals(data) if name.split(".", 1)[0] not in _PLAIN_MODULES]


def _pickle_globals(data: bytes) -> list[str]:
    """``module.name`` of every global the pickles at the start of ``data`` import, in order (both the old
    ``GLOBAL`` and protocol 4's ``STACK_GLOBAL``, whose two strings may come from the memo). torch's legacy format
    writes four pickles in a row, the object last."""
    found: list[str] = []
    stream = io.BytesIO(data)
    try:
        for _ in range(4):
            if stream.tell() >= len(data):
                break
            memo: dict[int, object] = {}
            recent: list[object] = []  # what the last opcodes pushed, enough to resolve STACK_GLOBAL
            for opcode, arg, _pos in pickletools.genops(stream):
                name = opcode.name
                if name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                    recent.append(None)
                elif name == "STACK_GLOBAL":
                    module, attr = recent[-2:] if len(recent) >= 2 else (None, None)
                    known = isinstance(module, str) and isinstance(attr, str)
                    found.append(f"{module}.{attr}" if known else "(an object named at run time)")
                    recent.append(None)
                elif name in ("EXT1", "EXT2", "EXT4"):
                    found.append(f"(copyreg extension {arg})")
                elif name == "MEMOIZE":
                    memo[len(memo)] = recent[-1] if recent else None
                elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[int(arg)] = recent[-1] if recent else None
                elif name in ("GET", "BINGET", "LONG_BINGET"):
                    recent.append(memo.get(int(arg)))
                elif name != "FRAME":
                    recent.append(arg if isinstance(arg, str) else None)
                del recent[:-4]
    except (ValueError, EOFError):  # a truncated or damaged pickle: what was named so far
        pass
    return found


def _read_safetensors(path: Path, mapped: bool) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, mapped onto the file, or read into memory the caller owns."""
    length = _safetensors_header_length(path)  # refuses an oversized header before the library reads it
    try:
        if mapped:
            return _mapped_safetensors(path, length) or safetensors.torch.load_file(path)
        return safetensors.torch.load(path.read_bytes())
    except (safetensors.SafetensorError, OSError) as err:
        raise CheckpointError(f"cannot read {path} as safetensors: {err}") from err


# The safetensors dtypes mapped by _mapped_safetensors; a file with any other goes to safetensors' own reader.
_SAFETENSORS_DTYPES: Mapping[str, torch.dtype] = MappingProxyType(
    {
        "F64": torch.float64,
        "F32": torch.float32,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "I64": torch.int64,
        "I32": torch.int32,
        "I16": torch.int16,
        "I8": torch.int8,
        "U8": torch.uint8,
        "BOOL": torch.bool,
    }
)


def _mapped_safetensors(path: Path, header_length: int) -> dict[str, torch.Tensor] | None:
    """The tensors of the safetensors file ``path`` as views of one private (copy-on-write) mapping of it; None
    where an entry is not one this maps (another dtype, an offset not aligned to its dtype, a size or range that
    does not fit), for safetensors' own reader to read or refuse.

    safetensors' ``load_file`` maps the file too, but makes each tensor through a Python slice of a storage,
    which takes longer than the rest of a large model's load together (``benchmarks/load_time.py``).
    """
    header = _parsed_safetensors_header(path, header_length)
    data_start = 8 + header_length
    size = path.stat().st_size
    views = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
            shape, (begin, end) = list(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            return None
        if not all(type(number) is int for number in (*shape, begin, end)):  # JSON integers only, no 1.5 or true
            return None
        itemsize = dtype.itemsize
        fits = 0 <= begin <= end <= size - data_start and min(shape, default=0) >= 0
        if not fits or end - begin != math.prod(shape) * itemsize or (data_start + begin) % itemsize:
            return None
        views.append((name, dtype, shape, (data_start + begin) // itemsize))
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)
    return {name: torch.empty(0, dtype=dtype).set_(storage, offset, shape) for name, dtype, shape, offset in views}


def _safetensors_header_length(path: Path) -> int:
    """The length of the safetensors file ``path``'s JSON header; refused over :data:`MAX_SAFETENSORS_HEADER_BYTES`."""
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
    if length > MAX_SAFETENSORS_HEADER_BYTES:
        raise CheckpointError(
            f"{path} has a safetensors header of {length:,} bytes, over the {MAX_SAFETENSORS_HEADER_BYTES:,} "
            f"segzoo reads (a model's header lists its tensors in far less); not a checkpoint segzoo loads"
        )
    return length


def safetensors_header(path: Path) -> dict[str, object]:
    """The JSON header of the safetensors file ``path`` (at most :data:`MAX_SAFETENSORS_HEADER_BYTES` read)."""
    return _parsed_safetensors_header(path, _safetensors_header_length(path))


def _parsed_safetensors_header(path: Path, length: int) -> dict[str, object]:
    with open(path, "rb") as f:
        f.seek(8)
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path} as safetensors: its header is not valid JSON ({err})") from err
    if not isinstance(header, dict):
        raise CheckpointError(f"cannot read {path} as safetensors: its header is not a JSON object")
    return header


def read_state_dict(
    path: str | Path, allow_unsafe_pickle: bool = False, mapped: bool = True, member: str | None = None
) -> dict[str, torch.Tensor]:
    """Tensors of a segzoo ``.safetensors`` file, of an mmseg / detectron2 / bare ``.pth`` checkpoint, or of
    the checkpoint inside a tar or zip archive, on the CPU.

    Files are memory-mapped where the format allows it, unless ``mapped`` is
    False: a file the user owns, which may change or be truncated while the
    model lives, is read into memory instead. ``.pth`` files are
    unpickled with ``weights_only=True``; a file that needs arbitrary objects
    is refused unless ``allow_unsafe_pickle`` is set, which runs whatever code
    the file contains: use it only for files you trust. Archives are checked
    member by member and only the checkpoint is extracted, read into memory
    (see :mod:`segzoo.weights.archive`); ``member`` names it where an archive
    holds several. A leading ``module.`` (from a DataParallel wrapper) is
    removed from every key.
    """
    path = Path(path)
    if sniff_format(path) in ARCHIVE_FORMATS:
        with extracted_checkpoint(path, member) as checkpoint:
            try:
                obj = load_checkpoint_object(checkpoint, allow_unsafe_pickle, mapped=False)  # a file about to go
                return _find_state_dict(obj, checkpoint)
            except CheckpointError as err:  # named by the member, not by the scratch file about to go
                raise type(err)(f"in the archive {path}: {str(err).replace(str(checkpoint), checkpoint.name)}") from err
    return _find_state_dict(load_checkpoint_object(path, allow_unsafe_pickle, mapped), path)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


def _find_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    where = "the file's top level"
    if isinstance(obj, Mapping):
        for key in CONTAINER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj, where = obj[key], f"{key!r}"
                break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or (where == "the file's top level" and not any(torch.is_tensor(v) for v in obj.values()))
    ):
        raise CheckpointError(
            f"{path} is neither a state dict nor a checkpoint holding one under 'state_dict' (mmseg) or "
            f"'model' (detectron2, segzoo train); `segzoo inspect {path}` shows what it holds"
        )
    odd_keys = [k for k in obj if not isinstance(k, str)]
    if odd_keys:
        raise CheckpointError(
            f"{path}: the state dict under {where} has {len(odd_keys)} keys that are not parameter names, e.g. "
            f"{_shown(odd_keys[0])} ({type(odd_keys[0]).__name__}); a state dict maps names (strings) to tensors"
        )
    odd_values = [(k, v) for k, v in obj.items() if not torch.is_tensor(v)]
    if odd_values:
        key, value = odd_values[0]
        raise CheckpointError(
            f"{path}: the state dict under {where} has {len(odd_values)} values that are not tensors, e.g. "
            f"{_shown(key)}: a {type(value).__name__}; a state dict maps names to tensors"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _assign(modules: Mapping[str, nn.Module], state_dict: Mapping[str, torch.Tensor]) -> None:
    """Make the checkpoint's tensors the parameters and buffers of ``modules`` (a model's, by name), copying only
    those not contiguous.

    They go straight into the modules' tables of parameters and buffers, whose
    keys were checked against ``model.state_dict()`` (``setattr`` would check
    them again, tensor by tensor).
    """
    for key, tensor in state_dict.items():
        module_name, _, attr = key.rpartition(".")
        module = modules[module_name]
        tensor = tensor.contiguous()
        if attr in module._parameters:
            module._parameters[attr] = nn.Parameter(tensor, requires_grad=module._parameters[attr].requires_grad)
        else:
            module._buffers[attr] = tensor


def _listed(keys: list[str]) -> str:
    return ", ".join(keys[:MAX_KEYS_SHOWN]) + (" ..." if len(keys) > MAX_KEYS_SHOWN else "")


def _matching_dtypes(
    given: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """``given`` with floating tensors cast to the model's floating dtype; any other dtype difference is an error."""
    cast: dict[str, torch.Tensor] = {}
    wrong = []
    for key, tensor in given.items():
        want = expected[key].dtype
        if tensor.dtype == want:
            continue
        if tensor.is_floating_point() and torch.empty((), dtype=want).is_floating_point():
            cast[key] = tensor.to(want)
        else:
            wrong.append(f"{key}: checkpoint {tensor.dtype}, model {want}")
    if wrong:
        raise CheckpointMismatchError(
            f"{source} has tensors of a dtype the model cannot take ({len(wrong)}): {_listed(wrong)}; "
            f"a checkpoint for this model stores floating-point weights (and int64 BatchNorm counters)"
        )
    if cast:
        pairs = sorted({f"{given[k].dtype} -> {t.dtype}" for k, t in cast.items()})
        log.info("%s: cast %d tensors to the model's dtype (%s)", source, len(cast), ", ".join(pairs))
    return {**given, **cast}


def load_state_dict_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, skip: Iterable[str] = ()
) -> None:
    """Put ``state_dict`` into ``model``, requiring every key and shape to match.

    The tensors are assigned, not copied, so ``model`` may be built on the
    meta device (``build_architecture(..., initialize=False)``); what a
    checkpoint does not hold is then computed here (see
    :func:`_materialize_derived_buffers`). Floating-point tensors of another
    precision (half, double) are cast to the model's dtype, with a log line;
    other dtype differences are errors. Submodules named in ``skip`` ignore
    the checkpoint and are freshly initialized. On any mismatch nothing is
    loaded and the error names ``source`` and the offending keys.
    """
    skip = list(skip)
    prefixes = tuple(f"{name}." for name in skip)
    expected = {k: v for k, v in _state_tensors(model).items() if not k.startswith(prefixes)}
    given = {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    mismatched = sorted(
        f"{k}: checkpoint {tuple(given[k].shape)}, model {tuple(expected[k].shape)}"
        for k in expected.keys() & given.keys()
        if given[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        parts = [f"{source} does not match {type(model).__name__}"]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                parts.append(f"{len(keys)} {label}: {_listed(keys)}")
        if len(missing) > len(expected) // 2:  # mostly another layout: show both side by side
            parts.append(f"the file holds: {prefix_summary(given)}")
            parts.append(f"the model expects: {prefix_summary(expected)}")
        raise CheckpointMismatchError("\n  ".join(parts))
    modules = dict(model.named_modules())
    _assign(modules, _matching_dtypes(given, expected, source))
    for name in skip:
        module = model.get_submodule(name)
        if any(t.is_meta for t in (*module.parameters(), *module.buffers())):
            module.to_empty(device="cpu")
        module.reset_parameters()
    on_meta = _materialize_derived_buffers(modules)
    if on_meta:
        raise RuntimeError(
            f"{type(model).__name__} still has tensors on the meta device after loading {source} "
            f"({len(on_meta)}): {_listed(on_meta)}; a module computes the buffers a checkpoint does not hold "
            f"in init_non_persistent_buffers()"
        )


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """What ``model.state_dict(keep_vars=True)`` holds, read from each module's parameters and persistent buffers
    (``state_dict``'s own walk costs a large model's load more than assigning its tensors); ``state_dict`` itself
    where a module changes what its state dict holds (a hook, its own ``_save_to_state_dict``, extra state)."""
    tensors = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        kind = type(module)
        if (
            module._state_dict_hooks
            or module._state_dict_pre_hooks
            or kind._save_to_state_dict is not nn.Module._save_to_state_dict
            or kind.get_extra_state is not nn.Module.get_extra_state
            or kind.state_dict is not nn.Module.state_dict
        ):
            return model.state_dict(keep_vars=True)
        dot = f"{prefix}." if prefix else ""
        tensors.update((dot + name, t) for name, t in module._parameters.items() if t is not None)
        tensors.update(
            (dot + name, t)
            for name, t in module._buffers.items()
            if t is not None and name not in module._non_persistent_buffers_set
        )
    return tensors


def _materialize_derived_buffers(modules: Mapping[str, nn.Module]) -> list[str]:
    """Compute the buffers a checkpoint does not hold (``persistent=False``) of a model built on the meta device,
    given its modules by name; returns the names of those still on the meta device after that (none, for a
    well-formed model). Every other tensor was in the state dict the strict load assigned.

    A module that registers such a buffer, derived from its configuration
    (e.g. a relative-position index), computes it in a method
    ``init_non_persistent_buffers()`` (timm's convention), called here once
    the module's meta tensors have memory.
    """
    on_meta = []
    for module_name, module in modules.items():
        if not module._non_persistent_buffers_set:
            continue
        derived = [module._buffers.get(name) for name in module._non_persistent_buffers_set]
        if any(t is not None and t.is_meta for t in derived) and hasattr(type(module), "init_non_persistent_buffers"):
            module.to_empty(device="cpu", recurse=False)
            module.init_non_persistent_buffers()
        on_meta += [
            f"{module_name}.{name}".lstrip(".")
            for name in sorted(module._non_persistent_buffers_set)
            if module._buffers.get(name) is not None and module._buffers[name].is_meta
        ]
    return on_meta
