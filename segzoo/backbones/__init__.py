"""Backbones: image in, a list of multi-scale feature maps out."""

from segzoo.backbones.eurnet import EurNet
from segzoo.backbones.moganet import MogaNet
from segzoo.backbones.resnet_dilated import DilatedResNet

__all__ = ["DilatedResNet", "EurNet", "MogaNet", "ViT"]


def __getattr__(name: str):
    """``ViT`` on first use: it imports timm (and torchvision), which ``import segzoo`` need not pay for."""
    if name == "ViT":
        from segzoo.backbones.vit import ViT  # noqa: PLC0415 (timm loads on first use, see above)

        return ViT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
