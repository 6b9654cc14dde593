"""MogaNet segmentors as the MogaNet segmentation configs build them (mmseg 0.29.1)."""
from __future__ import annotations

from segzoo.backbones.moganet import MogaNet
from segzoo.families import StateDict, register_architecture, without_classifier
from segzoo.heads import FPNHead, FPNNeck
from segzoo.segmentors import EncoderDecoder, upernet

# The ImageNet classifier of the timm-trained MogaNet files (a Linear after global pooling and norm4).
IMAGENET_CLASSIFIER_KEYS = ("head.weight", "head.bias")


def convert_imagenet_moganet(state_dict: StateDict, backbone: object) -> StateDict:
    """A MogaNet ImageNet-1K release (``state_dict`` of the timm checkpoint) as the segmentation backbone's.

    The backbone keeps the classification model's names (``patch_embed{i}``, ``blocks{i}``, ``norm{i}``);
    only the classifier ``head.weight`` / ``head.bias`` is dropped. The EMA copy the file also holds
    (``state_dict_ema``) is not used, as upstream's ``init_weights`` reads ``state_dict``.
    """
    return without_classifier(state_dict, IMAGENET_CLASSIFIER_KEYS)


@register_architecture(convert_imagenet=convert_imagenet_moganet)
def moganet_fpn(arch: str, num_classes: int = 150, drop_path_rate: float = 0.1) -> EncoderDecoder:
    """MogaNet + FPN neck (256 channels) + Semantic-FPN head (128 channels)."""
    backbone = MogaNet(arch, drop_path_rate=drop_path_rate)
    return EncoderDecoder(
        backbone,
        neck=FPNNeck(backbone.out_channels, 256),
        decode_head=FPNHead([256] * 4, 128, num_classes),
    )


@register_architecture(convert_imagenet=convert_imagenet_moganet)
def moganet_upernet(arch: str, num_classes: int = 150, drop_path_rate: float = 0.1) -> EncoderDecoder:
    """MogaNet + UperNet head (512 channels) + FCN auxiliary head on stage 3 (256 channels)."""
    return upernet(MogaNet(arch, drop_path_rate=drop_path_rate), num_classes)
