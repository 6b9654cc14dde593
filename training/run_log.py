"""What a run reports as it goes: one JSON object per line in the work dir, with the peak memory so far, and the
same numbers as TensorBoard scalars with ``--tensorboard``."""

from __future__ import annotations

import importlib.util
import json
import os
import resource
from pathlib import Path
from typing import Any

import torch

LOG_NAME = "log.jsonl"
TENSORBOARD_DIR = "tensorboard"


class JsonLog:
    """Appends one JSON object per line to the work dir's log (``path`` ``None``: not rank 0, writes nothing)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def keep_until(self, iteration: int) -> None:
        """Drop the records of iterations after ``iteration`` (a resumed run does them again), and a line that a
        killed process left half written, so that each iteration is logged once."""
        if self.path is None or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("iter", 0) <= iteration:
                kept.append(line + "\n")
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, self.path)


def require_tensorboard() -> None:
    """``--tensorboard`` needs the ``tensorboard`` package; say which extra brings it before anything is built."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ImportError('--tensorboard needs the tensorboard package: pip install "segzoo[tensorboard]"')


class TensorBoardLog:
    """The records of :class:`JsonLog` as TensorBoard scalars in ``path`` (``None``: not rank 0, writes nothing).

    Training records become ``train/<key>`` (loss terms, ``lr``, ``images_per_s``, ``memory_mb``) and evaluation
    records ``val/<metric>``, at the record's iteration. Each write is flushed, so a killed run keeps what it
    logged; a resumed run hides the events after its checkpoint (TensorBoard's ``purge_step``) and appends a new
    event file.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.purge_step: int | None = None
        self._writer = None

    def keep_until(self, iteration: int) -> None:
        """Hide the events of iterations after ``iteration`` (a resumed run does them again)."""
        self.purge_step = iteration + 1

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 (the optional tensorboard extra)

            self._writer = SummaryWriter(str(self.path), purge_step=self.purge_step)
        step = record["iter"]
        if "eval" in record:
            scalars = {f"val/{name}": value for name, value in record["eval"].items()}
        else:
            scalars = {f"train/{k}": v for k, v in record.items() if k not in ("iter", "eta_s")}
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, value, step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def peak_memory_mb(device: torch.device | str) -> float:
    """Peak memory so far: allocated GPU memory, or the process's peak resident size on the CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
