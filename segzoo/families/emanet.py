"""EMANet segmentors as the detectron2 port (leftthomas/EMANet) builds them, and its checkpoint converter."""

from __future__ import annotations

import torch

from segzoo.backbones.resnet_dilated import DilatedResNet
from segzoo.families import EXPORTS_DYNAMICALLY, Architecture, Family, StateDict, register_family, without_classifier
from segzoo.heads.ema import EMAHead
from segzoo.segmentors import EncoderDecoder
from segzoo.zoo import emanet as zoo

# detectron2 module prefixes -> segzoo's; the first match wins.
_RENAMES = (
    ("sem_seg_head.predictor.0.", "decode_head.predictor_conv."),
    ("sem_seg_head.predictor.2.", "decode_head.conv_seg."),
    ("sem_seg_head.", "decode_head."),
)


def convert_detectron2(state_dict: StateDict) -> StateDict:
    """An EMANet detectron2 checkpoint's weights in segzoo's layout (``sem_seg_head.*`` -> ``decode_head.*``).

    The backbone keys are the same in both layouts; a dict without
    ``sem_seg_head.`` keys is returned unchanged.
    """
    if not any(key.startswith("sem_seg_head.") for key in state_dict):
        return state_dict
    return {_renamed(key, _RENAMES): tensor for key, tensor in state_dict.items()}


def _renamed(key: str, renames: tuple[tuple[str, str], ...]) -> str:
    for old, new in renames:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def detectron2_parameter_name(name: str) -> str:
    """The name upstream's detectron2 model gives the tensor segzoo calls ``name``: the converter's rename run
    backwards."""
    return _renamed(name, tuple((new, old) for old, new in _RENAMES))


# The ImageNet classifier of Hang Zhang's encoding ResNets (deep stem, the layout of segzoo's DilatedResNet).
IMAGENET_CLASSIFIER_KEYS = ("fc.weight", "fc.bias")


def convert_imagenet_resnet(state_dict: StateDict, backbone: object) -> StateDict:
    """An encoding ResNet (``resnet{50,101,152}-*.pth``) as the dilated backbone's state dict.

    The names are the backbone's already; ``fc.weight`` / ``fc.bias`` are dropped. Files saved before
    PyTorch 0.4.1 have no BatchNorm ``num_batches_tracked`` counters: each BatchNorm with running
    statistics but no counter gets a zero one, which is what ``nn.BatchNorm2d`` itself does when it
    loads such a file (upstream's detectron2 load).
    """
    converted = without_classifier(state_dict, IMAGENET_CLASSIFIER_KEYS)
    for key in [k for k in converted if k.endswith(".running_mean")]:
        counter = key.removesuffix("running_mean") + "num_batches_tracked"
        converted.setdefault(counter, torch.tensor(0, dtype=torch.long))
    return converted


def emanet(
    depth: int,
    output_stride: int,
    num_classes: int,
    iterations: int = 3,
    em_momentum: float = 0.9,
    bn_momentum: float = 3e-4,
) -> EncoderDecoder:
    """Dilated ResNet (deep stem, multi-grid res5) + EMA head (512 channels, 64 bases), logits upsampled with
    ``align_corners=True``; every BatchNorm has momentum ``bn_momentum`` (``EMA.BN_MOM``)."""
    backbone = DilatedResNet(depth, output_stride, bn_momentum, multi_grid=True, out_indices=(3,))
    head = EMAHead(
        backbone.out_channels[3],
        512,
        num_classes,
        iterations=iterations,
        em_momentum=em_momentum,
        bn_momentum=bn_momentum,
    )
    return EncoderDecoder(backbone, head, align_corners=True)


FAMILY = register_family(
    Family(
        name="emanet",
        label="EMANet",
        colour="#ff7f0e",
        entries=zoo.ENTRIES,
        architectures=(
            Architecture(
                emanet,
                convert=convert_detectron2,
                convert_imagenet=convert_imagenet_resnet,
                export=EXPORTS_DYNAMICALLY,
            ),
        ),
    )
)
