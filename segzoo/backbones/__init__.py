"""Backbones: image in, a list of multi-scale feature maps out (strides 4, 8, 16, 32)."""
from segzoo.backbones.eurnet import EurNet
from segzoo.backbones.moganet import MogaNet

__all__ = ["EurNet", "MogaNet"]
