"""The learning-rate schedule of a recipe as a torch scheduler stepped once per iteration."""
from __future__ import annotations

import torch

from segzoo.training.recipe import Recipe


def build_lr_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe) -> torch.optim.lr_scheduler.LRScheduler:
    """Provisional: plain poly decay (warm-up and the other policies to come)."""
    power, iters = recipe.schedule.power, recipe.iters
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: (1 - min(i, iters) / iters) ** power)
