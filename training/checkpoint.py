"""Training checkpoints: everything a run needs to go on as if it had never stopped, written atomically.

A checkpoint is a ``torch.save`` dict of tensors and plain data only, so it is
read back with ``torch.load(weights_only=True)``:

- ``model``: the model's state dict (no DDP ``module.`` prefix), which is also
  what ``segzoo convert`` and ``create_model(checkpoint_path=...)`` read;
- ``optimizer``, ``scheduler``, ``scaler`` (``None`` without fp16): their state dicts;
- ``iteration``: optimizer steps done, which is also the sampler's position
  (``sampler``: the settings the stream was split with);
- ``rng``: every rank's global random states, in rank order;
- ``recipe`` and ``config``: the resolved recipe and run settings, as plain data.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from segzoo.weights.checkpoint import load_checkpoint_object

FORMAT = "segzoo-training/1"
_NAME = re.compile(r"iter_(\d+)\.pth")


def checkpoint_path(work_dir: Path, iteration: int) -> Path:
    return work_dir / f"iter_{iteration:08d}.pth"


def latest_checkpoint(work_dir: Path) -> Path | None:
    """The checkpoint of the furthest iteration in ``work_dir`` (temporary files of an interrupted write ignored)."""
    found = [(int(m.group(1)), p) for p in work_dir.glob("iter_*.pth") if (m := _NAME.fullmatch(p.name))]
    return max(found)[1] if found else None


def remove_interrupted_writes(work_dir: Path) -> list[Path]:
    """Delete the temporary files that :func:`save_checkpoint` calls left behind in ``work_dir`` when their process
    was killed (those of a process still running are left alone); returns them."""
    removed = []
    for tmp in work_dir.glob(".iter_*.pth.*.tmp"):
        pid = tmp.name.removesuffix(".tmp").rsplit(".", 1)[-1]
        if pid.isdigit() and not _running(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Write ``state`` to ``path`` through a temporary file and a rename: a killed run leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint`, read without unpickling objects."""
    state = load_checkpoint_object(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a segzoo training checkpoint (no format {FORMAT!r}); --resume takes a file that "
            f"segzoo train wrote, e.g. WORK_DIR/iter_00001000.pth. To start from weights, use create_model's "
            f"checkpoint_path instead"
        )
    return state
