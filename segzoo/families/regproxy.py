"""RegionProxy segmentors as the RegionProxy configs build them (mmseg 0.17), and their checkpoint converter."""
from __future__ import annotations

import re

import math

from torch import nn

from segzoo.families import StateDict, register_architecture, without_classifier
from segzoo.heads import ProxyHead
from segzoo.segmentors import EncoderDecoder

# mmseg 0.17 ViT names -> timm's (segzoo's). Anchored on names that only the mmseg layout has, so a
# segzoo-layout dict passes through unchanged. Hybrid stems already use timm's names upstream.
_MMSEG_TO_SEGZOO = [
    (re.compile(r"^backbone\.patch_embed\.projection\."), "backbone.patch_embed.proj."),
    (re.compile(r"^backbone\.layers\.(\d+)\.ln([12])\."), r"backbone.blocks.\1.norm\2."),
    (re.compile(r"^backbone\.layers\.(\d+)\.attn\.attn\.in_proj_(weight|bias)$"), r"backbone.blocks.\1.attn.qkv.\2"),
    (re.compile(r"^backbone\.layers\.(\d+)\.attn\.attn\.out_proj\."), r"backbone.blocks.\1.attn.proj."),
    (re.compile(r"^backbone\.layers\.(\d+)\.ffn\.layers\.0\.0\."), r"backbone.blocks.\1.mlp.fc1."),
    (re.compile(r"^backbone\.layers\.(\d+)\.ffn\.layers\.1\."), r"backbone.blocks.\1.mlp.fc2."),
    (re.compile(r"^backbone\.ln1\."), "backbone.norm."),
    (re.compile(r"^decode_head\.mlp\.0\.0\."), "decode_head.conv_seg."),
]


def _segzoo_key(key: str) -> str:
    for pattern, replacement in _MMSEG_TO_SEGZOO:
        new_key, found = pattern.subn(replacement, key)
        if found:
            return new_key
    return key


def convert_mmseg_regproxy(state_dict: StateDict) -> StateDict:
    """A RegionProxy checkpoint (mmseg 0.17 ViT layout) in segzoo's layout; segzoo's layout is returned as is.

    Renames the ViT tensors to timm's names (``nn.MultiheadAttention``'s packed ``in_proj`` is timm's ``qkv``,
    same q/k/v order) and turns the linear token classifier ``mlp.0.0`` into the 1x1 ``conv_seg``.
    """
    converted = {}
    for key, tensor in state_dict.items():
        new_key = _segzoo_key(key)
        if key == "decode_head.mlp.0.0.weight":
            tensor = tensor.reshape(*tensor.shape, 1, 1)
        converted[new_key] = tensor
    return converted


# The ImageNet classifiers of timm's ViTs (AugReg) and of DeiT's distilled model (class and distillation heads).
IMAGENET_CLASSIFIER_KEYS = ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias")


def convert_imagenet_vit(state_dict: StateDict, backbone: nn.Module) -> StateDict:
    """An ImageNet ViT in timm's layout (AugReg from timm, DeiT's release) as ``backbone``'s state dict.

    Drops the classifier (:data:`IMAGENET_CLASSIFIER_KEYS`) and resizes the square 384x384 position grid to
    the backbone's (the training crop's) with bicubic interpolation, ``align_corners=False`` and no
    antialiasing, keeping the class (and distillation) token rows: what upstream's ``init_weights`` does
    through mmseg's ``resize`` before its load. Other names are timm's on both sides.
    """
    from timm.layers import resample_abs_pos_embed  # timm is imported only when a RegionProxy model is used

    converted = without_classifier(state_dict, IMAGENET_CLASSIFIER_KEYS)
    pos_embed = converted.get("pos_embed")
    target = backbone.pos_embed
    if pos_embed is not None and pos_embed.shape != target.shape:
        prefix = backbone.num_prefix_tokens
        side = math.isqrt(pos_embed.shape[1] - prefix)
        converted["pos_embed"] = resample_abs_pos_embed(
            pos_embed, new_size=list(backbone.pos_grid), old_size=[side, side], num_prefix_tokens=prefix,
            interpolation="bicubic", antialias=False,
        )
    return converted


@register_architecture(convert=convert_mmseg_regproxy, convert_imagenet=convert_imagenet_vit)
def regproxy(
    arch: str,
    img_size: tuple[int, int],
    out_indices: tuple[int, int],
    num_classes: int = 150,
    distilled: bool = False,
    region_res: tuple[int, int] = (4, 4),
    drop_path_rate: float = 0.1,
) -> EncoderDecoder:
    """ViT ``arch`` (see :data:`segzoo.backbones.vit.VIT_ARCHS`) + ProxyHead on the token maps ``out_indices``.

    The affinity branch reads the first (a middle block, or -1 for the hybrids: the embedded tokens before
    the first block), the classifier the second (the last block); ``img_size`` is the training crop that
    sizes the position embedding; ``distilled`` adds DeiT's distillation token (the Base models).
    """
    from segzoo.backbones.vit import ViT  # imports timm: only when a RegionProxy model is built

    backbone = ViT(arch, img_size, out_indices, distilled=distilled, drop_path_rate=drop_path_rate)
    width = backbone.out_channels[-1]
    return EncoderDecoder(backbone, decode_head=ProxyHead(width, width, num_classes, region_res))
