"""MogaNet segmentors as the MogaNet segmentation configs build them (mmseg 0.29.1)."""
from __future__ import annotations

from segzoo.backbones.moganet import MogaNet
from segzoo.families import register_architecture
from segzoo.heads import FCNHead, FPNHead, FPNNeck, UPerHead
from segzoo.segmentors import EncoderDecoder


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
    backbone = MogaNet(arch, drop_path_rate=drop_path_rate)
    return EncoderDecoder(
        backbone,
        decode_head=UPerHead(backbone.out_channels, 512, num_classes),
        auxiliary_head=FCNHead(backbone.out_channels[2], 256, num_classes, in_index=2),
    )
