"""Read checkpoint files without running untrusted code, find the state dict, load it strictly."""

from __future__ import annotations

import logging
import pickle
import re
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from torch import nn

from segzoo.weights.archive import ZIP_MAGIC, extracted_checkpoint, is_zip_archive
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
    if head.startswith(ZIP_MAGIC):  # tested first: a zip inside a tar would fool is_zipfile
        return "zip" if is_zip_archive(path) else "torch-zip"
    if tarfile.is_tarfile(path):
        return "tar"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) > 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        return "safetensors"
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
        try:
            tensors = safetensors.torch.load_file(path)
            return tensors if mapped else {key: tensor.clone() for key, tensor in tensors.items()}
        except (safetensors.SafetensorError, OSError) as err:
            raise CheckpointError(f"cannot read {path} as safetensors: {err}") from err
    mmap = mapped and kind == "torch-zip"  # torch can map only its zip format
    try:
        if allow_unsafe_pickle:
            log.warning("unpickling %s without restrictions (allow_unsafe_pickle=True)", path)
            return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        with torch.serialization.safe_globals(_NUMPY_SCALAR_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        needed = re.search(r"GLOBAL (\S+)", str(err))
        if needed is None:  # not a request for code: the pickle itself is broken
            raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint (truncated or damaged?)") from err
        raise UnsafeCheckpointError(
            f"{path} holds more than tensors and plain data (it needs the Python object {needed.group(1)}), and "
            f"segzoo does not unpickle arbitrary objects, which could run code"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint (truncated or damaged?): {err}") from err


def read_state_dict(
    path: str | Path, allow_unsafe_pickle: bool = False, mapped: bool = True
) -> dict[str, torch.Tensor]:
    """Tensors of a segzoo ``.safetensors`` file, of an mmseg / detectron2 / bare ``.pth`` checkpoint, or of
    the checkpoint inside a tar or zip archive, on the CPU.

    Files are memory-mapped where the format allows it, unless ``mapped`` is
    False: a file the user owns, which may change or be truncated while the
    model lives, is read into memory instead. ``.pth`` files are
    unpickled with ``weights_only=True``; a file that needs arbitrary objects
    is refused unless ``allow_unsafe_pickle`` is set, which runs whatever code
    the file contains: use it only for files you trust. Archives are checked
    member by member and only the checkpoint is extracted (see
    :mod:`segzoo.weights.archive`). A leading ``module.`` (from a
    DataParallel wrapper) is removed from every key.
    """
    path = Path(path)
    if sniff_format(path) in ARCHIVE_FORMATS:
        with extracted_checkpoint(path) as checkpoint:
            try:
                return read_state_dict(checkpoint, allow_unsafe_pickle, mapped)
            except CheckpointError as err:
                raise type(err)(f"in the archive {path}: {err}") from err
    return _find_state_dict(load_checkpoint_object(path, allow_unsafe_pickle, mapped), path)


def _find_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in CONTAINER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(
            f"{path} is neither a state dict nor a checkpoint holding one under 'state_dict' (mmseg) or "
            f"'model' (detectron2, segzoo train); `segzoo inspect {path}` shows what it holds"
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
    expected = {k: v for k, v in model.state_dict(keep_vars=True).items() if not k.startswith(prefixes)}
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
