"""GloRe's Cityscapes segmentors: a dilated-ResNet FCN with one Global Reasoning unit.

The paper's segmentation code was never published outside its weight
archives; every choice it leaves open is an argument here, and the zoo
entries record the values they assume.
"""

from __future__ import annotations

from segzoo.backbones.resnet_dilated import DilatedResNet
from segzoo.families import EXPORTS_DYNAMICALLY, Architecture, Family, register_family
from segzoo.families.emanet import convert_imagenet_resnet
from segzoo.heads.glore import GloReFCNHead
from segzoo.segmentors import EncoderDecoder
from segzoo.zoo import glore as zoo


def glore_fcn(
    depth: int,
    num_classes: int = 19,
    output_stride: int = 8,
    channels: int = 512,
    num_mid: int = 512,
    normalize: bool = False,
    align_corners: bool = False,
) -> EncoderDecoder:
    """Dilated ResNet (deep stem, no multi-grid) + GloRe unit on res5 (``num_mid`` nodes) + FCN head."""
    backbone = DilatedResNet(depth, output_stride, multi_grid=False, out_indices=(3,))
    head = GloReFCNHead(
        backbone.out_channels[3], channels, num_classes, num_mid, normalize, align_corners=align_corners
    )
    return EncoderDecoder(backbone, head, align_corners=align_corners)


FAMILY = register_family(
    Family(
        name="glore",
        label="GloRe",
        colour="#2ca02c",
        entries=zoo.ENTRIES,
        architectures=(Architecture(glore_fcn, convert_imagenet=convert_imagenet_resnet, export=EXPORTS_DYNAMICALLY),),
    )
)
