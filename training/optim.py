"""The optimizer of a recipe, with upstream's per-parameter learning rates and weight decays."""
from __future__ import annotations

import torch
from torch import nn

from segzoo.training.recipe import Recipe


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """Provisional: one group with the base rate and decay (per-parameter rules to come)."""
    spec = recipe.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    if spec.type == "SGD":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    return torch.optim.AdamW(params, lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay)
