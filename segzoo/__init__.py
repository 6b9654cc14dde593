"""segzoo: published semantic-segmentation models, faithful to their papers, in pure PyTorch."""
__version__ = "0.1.0"

from segzoo.registry import (  # noqa: E402
    UnknownModelError, create_backbone, create_model, list_aliases, list_models, model_info,
)
from segzoo.zoo import ModelInfo  # noqa: E402
from segzoo.hub import push_to_hub, save_pretrained  # noqa: E402
from segzoo.inference import predict  # noqa: E402
from segzoo.optimize import optimize_for_inference  # noqa: E402

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
