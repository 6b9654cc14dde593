"""EurNet segmentors as the EurNet segmentation configs build them (mmseg 0.2x, UperNet)."""
from __future__ import annotations

from segzoo.backbones.eurnet import EurNet
from segzoo.families import register_architecture
from segzoo.segmentors import EncoderDecoder, upernet


@register_architecture
def eurnet_upernet(arch: str, num_classes: int = 150, drop_path_rate: float = 0.3) -> EncoderDecoder:
    """EurNet + UperNet head (512 channels) + FCN auxiliary head on stage 3 (256 channels)."""
    return upernet(EurNet(arch, drop_path_rate=drop_path_rate), num_classes)
