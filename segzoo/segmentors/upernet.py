"""UperNet as the mmseg configs of MogaNet and EurNet build it around any four-stage backbone."""

from __future__ import annotations

from torch import nn

from segzoo.heads import FCNHead, UPerHead
from segzoo.segmentors.encoder_decoder import EncoderDecoder


def upernet(backbone: nn.Module, num_classes: int) -> EncoderDecoder:
    """``backbone`` (with ``out_channels`` per stage) + UperNet head (512 channels) + FCN auxiliary head on
    stage 3 (256 channels)."""
    return EncoderDecoder(
        backbone,
        decode_head=UPerHead(backbone.out_channels, 512, num_classes),
        auxiliary_head=FCNHead(backbone.out_channels[2], 256, num_classes, in_index=2),
    )
