"""Backbones: image in, a list of multi-scale feature maps out."""
from segzoo.backbones.eurnet import EurNet
from segzoo.backbones.moganet import MogaNet
from segzoo.backbones.resnet_dilated import DilatedResNet
from segzoo.backbones.vit import ViT

__all__ = ["DilatedResNet", "EurNet", "MogaNet", "ViT"]
