"""Read checkpoint files without running untrusted code, find the state dict, load it strictly."""
from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from torch import nn

from segzoo.weights.errors import CheckpointError, CheckpointMismatchError

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


def read_state_dict(path: str | Path, allow_unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a segzoo ``.safetensors`` file or of an mmseg ``.pth`` checkpoint, on the CPU.

    Files are memory-mapped where the format allows it. ``.pth`` files are
    unpickled with ``weights_only=True``; a file that needs arbitrary objects
    is refused unless ``allow_unsafe_pickle`` is set, which runs whatever code
    the file contains: use it only for files you trust. A leading ``module.``
    (from a DataParallel wrapper) is removed from every key.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return safetensors.torch.load_file(path)
        except (safetensors.SafetensorError, OSError) as err:
            raise CheckpointError(f"cannot read {path} as safetensors: {err}") from err
    mmap = zipfile.is_zipfile(path)  # torch can map only its zip format
    try:
        if allow_unsafe_pickle:
            log.warning("unpickling %s without restrictions (allow_unsafe_pickle=True)", path)
            obj = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        else:
            with torch.serialization.safe_globals(_NUMPY_SCALAR_GLOBALS):
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} holds more than tensors and plain data, and segzoo does not unpickle arbitrary objects "
            f"(weights_only=True): {err}\nIf you trust this file, pass allow_unsafe_pickle=True."
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {err}") from err
    return _find_state_dict(obj, path)


# Keys under which training frameworks store the weights: mmcv's runner ({"state_dict", "meta", "optimizer"})
# and detectron2's checkpointer ({"model", "optimizer", "scheduler", "iteration"}).
_CONTAINER_KEYS = ("state_dict", "model")


def _find_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in _CONTAINER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(
            f"{path} is neither a state dict nor a checkpoint holding one under 'state_dict' (mmseg) or "
            f"'model' (detectron2)"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _assign(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Make the checkpoint's tensors the model's parameters and buffers, without copying."""
    modules = dict(model.named_modules())
    for key, tensor in state_dict.items():
        module_name, _, attr = key.rpartition(".")
        module = modules[module_name]
        current = getattr(module, attr)
        if isinstance(current, nn.Parameter):
            tensor = nn.Parameter(tensor, requires_grad=current.requires_grad)
        setattr(module, attr, tensor)


def load_state_dict_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, skip: Iterable[str] = ()
) -> None:
    """Put ``state_dict`` into ``model``, requiring every key and shape to match.

    The tensors are assigned, not copied, so ``model`` may be built without
    initialization (or on the meta device). Submodules named in ``skip`` ignore
    the checkpoint and are freshly initialized. On any mismatch nothing is
    loaded and the error names ``source`` and the offending keys.
    """
    skip = list(skip)
    prefixes = tuple(f"{name}." for name in skip)
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(prefixes)}
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
                shown = ", ".join(keys[:MAX_KEYS_SHOWN]) + (" ..." if len(keys) > MAX_KEYS_SHOWN else "")
                parts.append(f"{len(keys)} {label}: {shown}")
        raise CheckpointMismatchError("\n  ".join(parts))
    _assign(model, given)
    for name in skip:
        module = model.get_submodule(name)
        if any(t.is_meta for t in (*module.parameters(), *module.buffers())):
            module.to_empty(device="cpu")
        module.reset_parameters()
