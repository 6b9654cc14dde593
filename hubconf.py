"""torch.hub entry points: one per registered segzoo model and alias, generated from the registry.

torch.hub.load("<owner>/segzoo", "moganet_s_fpn", pretrained=True)
"""

from segzoo import create_model as _create_model
from segzoo import list_aliases as _list_aliases
from segzoo import list_models as _list_models
from segzoo import model_info as _model_info

dependencies = [
    "torch",
    "timm",
    "numpy",
    "cv2",
    "PIL",
    "requests",
    "safetensors",
    "tqdm",
    "filelock",
    "huggingface_hub",
]


def _entry_point(name: str):
    def entry_point(pretrained: bool = False, **kwargs):
        return _create_model(name, pretrained=pretrained, **kwargs)

    entry_point.__name__ = entry_point.__qualname__ = name
    entry_point.__doc__ = _model_info(name).summary
    return entry_point


for _name in [*_list_models(), *_list_aliases()]:
    globals()[_name] = _entry_point(_name)
