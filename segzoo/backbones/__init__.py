"""Backbones: image in, a list of multi-scale feature maps out (strides 4, 8, 16, 32)."""
from segzoo.backbones.moganet import MogaNet
from segzoo.backbones.vit import ViT

__all__ = ["MogaNet", "ViT"]
