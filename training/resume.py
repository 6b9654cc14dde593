"""Going on from a checkpoint: which one, whether it comes from the same run, and restoring the optimizer's state."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from segzoo.training import checkpoint as ckpt
from segzoo.training.batch import BatchSplit
from segzoo.training.config import TrainConfig
from segzoo.training.recipe import Recipe
from segzoo.zoo.records import to_plain

log = logging.getLogger("segzoo.training")


def find_resume_state(config: TrainConfig) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint ``--resume`` names and its content, or ``(None, None)`` for a fresh start."""
    if config.resume is None:
        return None, None
    path = ckpt.latest_checkpoint(config.work_path) if config.resume == "latest" else Path(config.resume)
    if path is None:
        log.warning("no checkpoint in %s yet: starting from iteration 0", config.work_path)
        return None, None
    return path, ckpt.load_checkpoint(path)


def check_same_run(state: dict[str, Any], recipe: Recipe, split: BatchSplit, path: Path) -> None:
    """Warn when the resumed run differs from the one that wrote ``state``: it will not reproduce it exactly.

    A recipe field that the checkpoint predates is not compared.
    """
    saved_recipe = state["recipe"]
    changed = [k for k, v in to_plain(recipe).items() if k in saved_recipe and saved_recipe[k] != v]
    if changed:
        warnings.warn(
            f"resuming {path} with a recipe that differs in {', '.join(changed)}: the run will not "
            f"reproduce an uninterrupted one",
            stacklevel=3,
        )
    saved = state["sampler"]
    if saved["world_size"] != split.world_size:
        warnings.warn(
            f"{path} was written by {saved['world_size']} processes, this run has {split.world_size}: "
            f"the data stream and the dropout and drop-path masks go on exactly, BatchNorm statistics do not",
            stacklevel=3,
        )


def restore_optimization(
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> int:
    """Load the optimizer, scheduler and gradient scaler states of ``state``; returns the iteration to go on from."""
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    return state["iteration"]
