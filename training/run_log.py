"""What a run reports as it goes: one JSON object per line in the work dir, with the peak memory so far."""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path
from typing import Any

import torch

LOG_NAME = "log.jsonl"


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


def peak_memory_mb(device: torch.device | str) -> float:
    """Peak memory so far: allocated GPU memory, or the process's peak resident size on the CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
