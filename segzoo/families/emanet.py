"""EMANet segmentors as the detectron2 port (leftthomas/EMANet) builds them, and its checkpoint converter."""
from __future__ import annotations

from segzoo.backbones.resnet_dilated import DilatedResNet
from segzoo.families import StateDict, register_architecture
from segzoo.heads.ema import EMAHead
from segzoo.segmentors import EncoderDecoder

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
    converted = {}
    for key, tensor in state_dict.items():
        for old, new in _RENAMES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        converted[key] = tensor
    return converted


@register_architecture(convert=convert_detectron2)
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
        backbone.out_channels[3], 512, num_classes,
        iterations=iterations, em_momentum=em_momentum, bn_momentum=bn_momentum,
    )
    return EncoderDecoder(backbone, head, align_corners=True)
