"""segzoo: published semantic-segmentation models, faithful to their papers, in pure PyTorch."""
from segzoo.registry import UnknownModelError, create_model, list_aliases, list_models, model_info
from segzoo.zoo import ModelInfo

__version__ = "0.1.0"

__all__ = ["ModelInfo", "UnknownModelError", "__version__", "create_model", "list_aliases", "list_models", "model_info"]
