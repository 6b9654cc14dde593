"""segzoo: published semantic-segmentation models, faithful to their papers, in pure PyTorch.

The public names load on first use (PEP 562), so that ``segzoo list`` and ``segzoo info`` answer without
importing torch; ``from segzoo import create_model`` works as always.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from segzoo._version import __version__

# public name -> the module that defines it
_EXPORTS = {
    "ModelInfo": "segzoo.zoo",
    "UnknownModelError": "segzoo.zoo.catalog",
    "create_backbone": "segzoo.registry",
    "create_model": "segzoo.registry",
    "list_aliases": "segzoo.registry",
    "list_models": "segzoo.registry",
    "model_info": "segzoo.registry",
    "optimize_for_inference": "segzoo.optimize",
    "predict": "segzoo.inference",
    "predict_folder": "segzoo.jobs",
    "push_to_hub": "segzoo.hub",
    "save_pretrained": "segzoo.hub",
}

__all__ = [  # the names of _EXPORTS, written out for readers and linters
    "ModelInfo",
    "UnknownModelError",
    "__version__",
    "create_backbone",
    "create_model",
    "list_aliases",
    "list_models",
    "model_info",
    "optimize_for_inference",
    "predict",
    "predict_folder",
    "push_to_hub",
    "save_pretrained",
]

if TYPE_CHECKING:
    from segzoo.hub import push_to_hub, save_pretrained
    from segzoo.inference import predict
    from segzoo.jobs import predict_folder
    from segzoo.optimize import optimize_for_inference
    from segzoo.registry import create_backbone, create_model, list_aliases, list_models, model_info
    from segzoo.zoo import ModelInfo
    from segzoo.zoo.catalog import UnknownModelError


def __getattr__(name: str) -> Any:
    """A public name, or a submodule (``segzoo.registry``), imported on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
