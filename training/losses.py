"""The training losses of a recipe."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.training.recipe import LossSpec, Recipe


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, losses: LossSpec) -> torch.Tensor:
    """Pixel-wise cross-entropy averaged by ``losses.convention``.

    ``mmseg``: mean over all pixels, ignored ones contributing 0 (mmseg 0.x
    ``CrossEntropyLoss`` without ``avg_non_ignore``). ``detectron2``: mean over
    the pixels that are not ignored (``F.cross_entropy(reduction="mean")``).
    """
    if logits.shape[-2:] != labels.shape[-2:]:
        raise ValueError(
            f"logits of size {tuple(logits.shape[-2:])} do not match labels of size "
            f"{tuple(labels.shape[-2:])}; the model must return logits at the label resolution"
        )
    if losses.convention == "detectron2":
        return F.cross_entropy(logits, labels, ignore_index=losses.ignore_index, reduction="mean")
    return F.cross_entropy(logits, labels, ignore_index=losses.ignore_index, reduction="none").mean()


def compute_losses(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, recipe: Recipe
) -> dict[str, torch.Tensor]:
    """The named weighted loss terms of ``model`` (in training mode) on a batch, and their sum under ``"loss"``.

    ``model(images)`` returns ``{"out": logits, "aux": aux_logits}`` at input
    resolution, resized from each head's output bilinearly with the model's
    ``align_corners`` - where each upstream computes its loss (mmseg resizes
    the head's logits to the label size with the head's ``align_corners``;
    EMANet's head upsamples with ``align_corners=True`` itself).
    """
    outputs = model(images)
    if not isinstance(outputs, dict):
        raise TypeError(
            "compute_losses needs the model in training mode (model.train()), which returns a dict of "
            f"logits; got {type(outputs).__name__}"
        )
    labels = labels.long()
    losses = {}
    for term in recipe.losses.terms:
        if term.output not in outputs:
            raise KeyError(
                f"recipe {recipe.name!r} has a loss on the model output {term.output!r}, but the model "
                f"returned only {sorted(outputs)}"
            )
        losses[term.key] = term.weight * cross_entropy(outputs[term.output], labels, recipe.losses)
    losses["loss"] = sum(losses.values())
    return losses
