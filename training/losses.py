"""The training losses of a recipe."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.training.recipe import Recipe


def compute_losses(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, recipe: Recipe) -> dict[str, torch.Tensor]:
    """The named weighted loss terms of ``model`` (in training mode) on a batch, and their sum under ``"loss"``.

    Provisional: mmseg's mean over all pixels for every convention.
    """
    outputs = model(images)
    losses = {}
    for term in recipe.losses.terms:
        ce = F.cross_entropy(outputs[term.output], labels.long(), ignore_index=recipe.losses.ignore_index,
                             reduction="none")
        losses[f"loss_{term.output}"] = term.weight * ce.mean()
    losses["loss"] = sum(losses.values())
    return losses
