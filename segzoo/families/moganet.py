"""MogaNet segmentors as the MogaNet segmentation configs build them (mmseg 0.29.1)."""
from __future__ import annotations

from segzoo.backbones.moganet import MogaNet
from segzoo.families import register_architecture
from segzoo.heads import FPNHead, FPNNeck
from segzoo.segmentors import EncoderDecoder, upernet


@register_architecture
def moganet_fpn(arch: str, num_classes: int = 150, drop_path_rate: float = 0.1) -> EncoderDecoder:
    """MogaNet + FPN neck (256 channels) + Semantic-FPN head (128 channels)."""
    backbone = MogaNet(arch, drop_path_rate=drop_path_rate)
    return EncoderDecoder(
        backbone,
        neck=FPNNeck(backbone.out_channels, 256),
        decode_head=FPNHead([256] * 4, 128, num_classes),
    )


@register_architecture
def moganet_upernet(arch: str, num_classes: int = 150, drop_path_rate: float = 0.1) -> EncoderDecoder:
    """MogaNet + UperNet head (512 channels) + FCN auxiliary head on stage 3 (256 channels)."""
    return upernet(MogaNet(arch, drop_path_rate=drop_path_rate), num_classes)
