"""Training: a recipe per zoo entry and one loop that runs them all (``torchrun -m segzoo.training``).

Installed with ``pip install "segzoo[train]"``; nothing in ``segzoo`` imports it.
"""

from segzoo.training.losses import compute_losses
from segzoo.training.optim import build_optimizer
from segzoo.training.recipe import Recipe
from segzoo.training.recipes import get_recipe
from segzoo.training.schedules import build_lr_scheduler

__all__ = ["Recipe", "build_lr_scheduler", "build_optimizer", "compute_losses", "get_recipe"]
