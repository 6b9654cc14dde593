"""The learning-rate schedule of a recipe as a torch scheduler stepped once per iteration."""

from __future__ import annotations

import dataclasses
import itertools
import math
from bisect import bisect_right

import torch

from segzoo.training.recipe import Recipe, ScheduleSpec


def _mmcv_warmup_factor(schedule: ScheduleSpec, iteration: int) -> float:
    """mmcv ``LrUpdaterHook.get_warmup_lr``: a factor on the already-decayed rate, before ``warmup_iters``."""
    if schedule.warmup is None or iteration >= schedule.warmup_iters:
        return 1.0
    if schedule.warmup == "constant":
        return schedule.warmup_ratio
    return 1 - (1 - iteration / schedule.warmup_iters) * (1 - schedule.warmup_ratio)


def _detectron2_warmup_factor(schedule: ScheduleSpec, iteration: int) -> float:
    """detectron2 ``_get_warmup_factor_at_iter``."""
    if schedule.warmup is None or iteration >= schedule.warmup_iters:
        return 1.0
    if schedule.warmup == "constant":
        return schedule.warmup_ratio
    alpha = iteration / schedule.warmup_iters
    return schedule.warmup_ratio * (1 - alpha) + alpha


def _cosine_restart(schedule: ScheduleSpec, base_lr: float, iteration: int) -> float:
    """mmcv ``CosineRestartLrUpdaterHook.get_lr`` (``by_epoch=False``)."""
    end = 0
    for period, weight in zip(schedule.periods, schedule.restart_weights):
        start, end = end, end + period
        if iteration < end:
            target = base_lr * schedule.min_lr_ratio
            alpha = min((iteration - start) / period, 1)
            return target + 0.5 * weight * (base_lr - target) * (math.cos(math.pi * alpha) + 1)
    raise ValueError(f"iteration {iteration} is past the cosine-restart periods {schedule.periods} (total {end})")


def learning_rate(schedule: ScheduleSpec, total_iters: int, base_lr: float, iteration: int) -> float:
    """The rate of a parameter group with base rate ``base_lr`` at ``iteration`` (0-based), as upstream sets it."""
    if schedule.style == "mmcv":
        if schedule.policy == "poly":
            coeff = (1 - iteration / total_iters) ** schedule.power
            regular = (base_lr - schedule.min_lr) * coeff + schedule.min_lr
        elif schedule.policy == "cosine_restart":
            regular = _cosine_restart(schedule, base_lr, iteration)
        else:
            raise ValueError(
                f"mmcv schedule policy {schedule.policy!r} is not supported; use 'poly' or 'cosine_restart'"
            )
        return regular * _mmcv_warmup_factor(schedule, iteration)
    factor = _detectron2_warmup_factor(schedule, iteration)
    if schedule.policy == "cosine":
        return base_lr * factor * 0.5 * (1.0 + math.cos(math.pi * iteration / total_iters))
    if schedule.policy == "step":
        return base_lr * factor * schedule.gamma ** bisect_right(schedule.steps, iteration)
    raise ValueError(f"detectron2 schedule policy {schedule.policy!r} is not supported; use 'cosine' or 'step'")


def rescaled(schedule: ScheduleSpec, old_iters: int, new_iters: int) -> ScheduleSpec:
    """``schedule`` stretched from ``old_iters`` to ``new_iters`` iterations: warm-up, cosine-restart period
    boundaries and step milestones scale in proportion (rounded), so a shorter or longer run goes through the
    same phases as the recipe's (``poly`` and ``cosine`` already follow the run's length)."""
    if new_iters == old_iters:
        return schedule

    def scale(iteration: int) -> int:
        return round(iteration * new_iters / old_iters)

    boundaries = [scale(end) for end in itertools.accumulate(schedule.periods)]
    return dataclasses.replace(
        schedule,
        warmup_iters=scale(schedule.warmup_iters),
        periods=tuple(end - start for start, end in zip([0, *boundaries], boundaries)),
        steps=tuple(scale(step) for step in schedule.steps),
    )


def with_warmup(schedule: ScheduleSpec, warmup_iters: int) -> ScheduleSpec:
    """``schedule`` with a warm-up of ``warmup_iters`` iterations (0: none); a schedule that had none gets a
    linear one from its ``warmup_ratio`` (mmcv's default 0.1 unless the recipe set another)."""
    if warmup_iters == 0:
        return dataclasses.replace(schedule, warmup=None, warmup_iters=0)
    return dataclasses.replace(schedule, warmup=schedule.warmup or "linear", warmup_iters=warmup_iters)


class RecipeLRScheduler(torch.optim.lr_scheduler.LRScheduler):
    """Sets every group's rate to :func:`learning_rate` of its own base rate at the current iteration.

    Closed form (no chaining), so a resumed run gets exactly the rates of an
    uninterrupted one; its state holds only plain values.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, schedule: ScheduleSpec, total_iters: int, last_epoch: int = -1
    ) -> None:
        self.schedule = dataclasses.asdict(schedule)
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        schedule = ScheduleSpec(**self.schedule)
        return [learning_rate(schedule, self.total_iters, base_lr, self.last_epoch) for base_lr in self.base_lrs]


def build_lr_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe) -> RecipeLRScheduler:
    """The recipe's schedule on ``optimizer``: call ``step()`` once after each ``optimizer.step()``, so that
    iteration ``i`` (0-based) trains with upstream's rate for iteration ``i``; each group's multiplier applies
    through its own base rate."""
    return RecipeLRScheduler(optimizer, recipe.schedule, recipe.iters)
