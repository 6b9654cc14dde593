"""segzoo: published semantic-segmentation models, faithful to their papers, in pure PyTorch."""

from segzoo._version import __version__
from segzoo.hub import push_to_hub, save_pretrained
from segzoo.inference import predict
from segzoo.optimize import optimize_for_inference
from segzoo.registry import (
    UnknownModelError,
    create_backbone,
    create_model,
    list_aliases,
    list_models,
    model_info,
)
from segzoo.zoo import ModelInfo

__all__ = [
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
    "push_to_hub",
    "save_pretrained",
]
