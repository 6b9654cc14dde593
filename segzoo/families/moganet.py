"""MogaNet segmentors as the MogaNet segmentation configs build them (mmseg 0.29.1)."""

from __future__ import annotations

from segzoo.backbones.moganet import MogaNet
from segzoo.families import (
    EXPORTS_DYNAMICALLY,
    Architecture,
    Family,
    FormatSupport,
    StateDict,
    register_family,
    without_classifier,
)
from segzoo.heads import FPNHead, FPNNeck
from segzoo.segmentors import EncoderDecoder, upernet
from segzoo.zoo import moganet as zoo

# The ImageNet classifier of the timm-trained MogaNet files (a Linear after global pooling and norm4).
IMAGENET_CLASSIFIER_KEYS = ("head.weight", "head.bias")


def convert_imagenet_moganet(state_dict: StateDict, backbone: object) -> StateDict:
    """A MogaNet ImageNet-1K release (``state_dict`` of the timm checkpoint) as the segmentation backbone's.

    The backbone keeps the classification model's names (``patch_embed{i}``, ``blocks{i}``, ``norm{i}``);
    only the classifier ``head.weight`` / ``head.bias`` is dropped. The EMA copy the file also holds
    (``state_dict_ema``) is not used, as upstream's ``init_weights`` reads ``state_dict``.
    """
    return without_classifier(state_dict, IMAGENET_CLASSIFIER_KEYS)


def moganet_fpn(arch: str, num_classes: int = 150, drop_path_rate: float = 0.1) -> EncoderDecoder:
    """MogaNet + FPN neck (256 channels) + Semantic-FPN head (128 channels)."""
    backbone = MogaNet(arch, drop_path_rate=drop_path_rate)
    return EncoderDecoder(
        backbone,
        neck=FPNNeck(backbone.out_channels, 256),
        decode_head=FPNHead([256] * 4, 128, num_classes),
    )


def moganet_upernet(arch: str, num_classes: int = 150, drop_path_rate: float = 0.1) -> EncoderDecoder:
    """MogaNet + UperNet head (512 channels) + FCN auxiliary head on stage 3 (256 channels)."""
    return upernet(MogaNet(arch, drop_path_rate=drop_path_rate), num_classes)


# UperNet's pyramid pooling (adaptive average pooling to 1, 2, 3 and 6 bins) exports to ONNX as fixed pools.
_PPM_ONNX = FormatSupport(
    "fixed",
    "UperNet's pyramid pooling (adaptive average pooling to 1, 2, 3 and 6 bins) becomes ONNX average "
    "pools whose kernels are fixed at the export size, so other sizes would give wrong logits",
)

FAMILY = register_family(
    Family(
        name="moganet",
        label="MogaNet",
        colour="#1f77b4",
        entries=zoo.ENTRIES,
        architectures=(
            Architecture(moganet_fpn, convert_imagenet=convert_imagenet_moganet, export=EXPORTS_DYNAMICALLY),
            Architecture(
                moganet_upernet,
                convert_imagenet=convert_imagenet_moganet,
                export={**EXPORTS_DYNAMICALLY, "onnx": _PPM_ONNX},
            ),
        ),
    )
)
