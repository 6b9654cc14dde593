"""The process group of a training run: one process, or ``torchrun``'s K (gloo on CPU, nccl on CUDA)."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Processes:
    """Where this process stands: its ``rank`` among ``world_size`` and the ``device`` it trains on."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_processes(device: str) -> Processes:
    """Join the process group ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1), else run alone.

    ``device`` ``cuda`` becomes this process's GPU (``cuda:LOCAL_RANK``) and the
    group uses nccl; any other device uses gloo.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    target = torch.device(device)
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) if world_size > 1 else 0)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if world_size == 1:
        return Processes(0, 1, target)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), target)


def close_processes(processes: Processes) -> None:
    if processes.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(processes: Processes) -> None:
    if processes.distributed:
        dist.barrier()


def mean_over_processes(values: dict[str, float], processes: Processes) -> dict[str, float]:
    """The average of each value over all processes (for logging: every process must call it)."""
    if not processes.distributed or not values:
        return values
    stacked = torch.tensor(list(values.values()), dtype=torch.float64, device=processes.device)
    dist.all_reduce(stacked)
    return dict(zip(values, (stacked / processes.world_size).tolist()))


def gather_to_main(value: Any, processes: Processes) -> list[Any] | None:
    """Every process's ``value`` in rank order on rank 0 (``None`` elsewhere); every process must call it."""
    if not processes.distributed:
        return [value]
    gathered = [None] * processes.world_size if processes.is_main else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and every GPU) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states() -> dict[str, torch.Tensor]:
    """This process's global random states as tensors, so that ``torch.load(weights_only=True)`` reads them back."""
    _, keys, position, has_gauss, cached_gauss = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
        "numpy_rest": torch.tensor([position, has_gauss, cached_gauss], dtype=torch.float64),
        "python": torch.tensor(python_state, dtype=torch.int64),
        "python_rest": torch.tensor([version, float("nan") if gauss_next is None else gauss_next], dtype=torch.float64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_states(states: dict[str, torch.Tensor]) -> None:
    """Restore what :func:`rng_states` recorded."""
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])
    position, has_gauss, cached_gauss = states["numpy_rest"].tolist()
    np.random.set_state(
        ("MT19937", states["numpy_keys"].numpy().astype(np.uint32), int(position), int(has_gauss), cached_gauss)
    )
    version, gauss_next = states["python_rest"].tolist()
    random.setstate((int(version), tuple(states["python"].tolist()), None if np.isnan(gauss_next) else gauss_next))
