"""Training: a recipe per zoo entry and one loop that runs them all (``torchrun -m segzoo.training``).

Installed with ``pip install "segzoo[train]"``; nothing in ``segzoo`` imports it. The public names load on
first use (PEP 562), so that adding ``segzoo train`` to the ``segzoo`` command imports no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_EXPORTS = {
    "Recipe": "segzoo.training.recipe",
    "build_lr_scheduler": "segzoo.training.schedules",
    "build_optimizer": "segzoo.training.optim",
    "compute_losses": "segzoo.training.losses",
    "get_recipe": "segzoo.training.recipes",
}

__all__ = ["Recipe", "build_lr_scheduler", "build_optimizer", "compute_losses", "get_recipe"]

if TYPE_CHECKING:
    from segzoo.training.losses import compute_losses
    from segzoo.training.optim import build_optimizer
    from segzoo.training.recipe import Recipe
    from segzoo.training.recipes import get_recipe
    from segzoo.training.schedules import build_lr_scheduler


def __getattr__(name: str) -> Any:
    """A public name, imported on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
