"""Backbones: image in, a list of multi-scale feature maps out."""
from segzoo.backbones.moganet import MogaNet
from segzoo.backbones.resnet_dilated import DilatedResNet

__all__ = ["DilatedResNet", "MogaNet"]
