"""RegionProxy segmentors as the RegionProxy configs build them (mmseg 0.17), and their checkpoint converter."""

from __future__ import annotations

import math
import re

from torch import nn

from segzoo.families import (
    EXPORTS_DYNAMICALLY,
    Architecture,
    Family,
    FormatSupport,
    StateDict,
    register_family,
    without_classifier,
)
from segzoo.heads import ProxyHead
from segzoo.segmentors import EncoderDecoder
from segzoo.zoo import regproxy as zoo

# mmseg 0.17 ViT names and timm's (segzoo's), written once for both directions: {i} is a block index, {n} 1 or 2,
# {p} weight or bias. The mmseg side is anchored on names only that layout has, so a segzoo-layout dict passes
# the converter unchanged. Hybrid stems already use timm's names upstream (see mmseg_parameter_name).
_VIT_NAMES = (
    ("backbone.patch_embed.projection.", "backbone.patch_embed.proj."),
    ("backbone.layers.{i}.ln{n}.", "backbone.blocks.{i}.norm{n}."),
    ("backbone.layers.{i}.attn.attn.in_proj_{p}", "backbone.blocks.{i}.attn.qkv.{p}"),
    ("backbone.layers.{i}.attn.attn.out_proj.", "backbone.blocks.{i}.attn.proj."),
    ("backbone.layers.{i}.ffn.layers.0.0.", "backbone.blocks.{i}.mlp.fc1."),
    ("backbone.layers.{i}.ffn.layers.1.", "backbone.blocks.{i}.mlp.fc2."),
    ("backbone.ln1.", "backbone.norm."),
    ("decode_head.mlp.0.0.", "decode_head.conv_seg."),
)
_FIELDS = {"i": r"(?P<i>\d+)", "n": r"(?P<n>[12])", "p": r"(?P<p>weight|bias)"}
Rules = list[tuple[re.Pattern, str]]


def _name_rules(side: int) -> Rules:
    """Regex rewrites from one side of ``_VIT_NAMES`` (0: mmseg, 1: segzoo) to the other."""
    rules = []
    for pair in _VIT_NAMES:
        source, target = pair[side], pair[1 - side]
        parts = re.split(r"\{(\w)\}", source)  # text, field, text, ...
        pattern = "".join(_FIELDS[part] if k % 2 else re.escape(part) for k, part in enumerate(parts))
        rules.append(
            (re.compile(f"^{pattern}" + ("$" if source.endswith("}") else "")), re.sub(r"\{(\w)\}", r"\\g<\1>", target))
        )
    return rules


_TO_SEGZOO, _TO_MMSEG = _name_rules(0), _name_rules(1)


def _rename(key: str, rules: Rules) -> str:
    for pattern, replacement in rules:
        new_key, found = pattern.subn(replacement, key)
        if found:
            return new_key
    return key


def mmseg_parameter_name(name: str, hybrid: bool) -> str:
    """The mmseg 0.17 name of the tensor segzoo calls ``name``: the converter's rename run backwards.

    A ``hybrid`` ViT keeps timm's ``patch_embed.proj`` upstream, a plain one calls it ``projection``.
    """
    return _rename(name, _TO_MMSEG[1:] if hybrid else _TO_MMSEG)


def convert_mmseg_regproxy(state_dict: StateDict) -> StateDict:
    """A RegionProxy checkpoint (mmseg 0.17 ViT layout) in segzoo's layout; segzoo's layout is returned as is.

    Renames the ViT tensors to timm's names (``nn.MultiheadAttention``'s packed ``in_proj`` is timm's ``qkv``,
    same q/k/v order) and turns the linear token classifier ``mlp.0.0`` into the 1x1 ``conv_seg``.
    """
    converted = {}
    for key, tensor in state_dict.items():
        new_key = _rename(key, _TO_SEGZOO)
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
    from timm.layers import resample_abs_pos_embed  # noqa: PLC0415 (timm loads only when a RegionProxy model is used)

    converted = without_classifier(state_dict, IMAGENET_CLASSIFIER_KEYS)
    pos_embed = converted.get("pos_embed")
    target = backbone.pos_embed
    if pos_embed is not None and pos_embed.shape != target.shape:
        prefix = backbone.num_prefix_tokens
        side = math.isqrt(pos_embed.shape[1] - prefix)
        converted["pos_embed"] = resample_abs_pos_embed(
            pos_embed,
            new_size=list(backbone.pos_grid),
            old_size=[side, side],
            num_prefix_tokens=prefix,
            interpolation="bicubic",
            antialias=False,
        )
    return converted


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
    from segzoo.backbones.vit import ViT  # noqa: PLC0415 (imports timm: only when a RegionProxy model is built)

    backbone = ViT(arch, img_size, out_indices, distilled=distilled, drop_path_rate=drop_path_rate)
    width = backbone.out_channels[-1]
    return EncoderDecoder(backbone, decode_head=ProxyHead(width, width, num_classes, region_res))


_HYBRID_STEM = FormatSupport(
    "fixed",
    "the hybrid's ResNet stem pads every convolution TF-'same' from the input size, and torch.export did not "
    "finish capturing that for symbolic sizes (stopped after 6 minutes on a 64x64 example)",
)
_HYBRID_EXPORT = {**EXPORTS_DYNAMICALLY, "onnx": _HYBRID_STEM, "exported-program": _HYBRID_STEM}

FAMILY = register_family(
    Family(
        name="regproxy",
        label="RegionProxy",
        colour="#d62728",
        entries=zoo.ENTRIES,
        architectures=(
            Architecture(
                regproxy,
                convert=convert_mmseg_regproxy,
                convert_imagenet=convert_imagenet_vit,
                export=EXPORTS_DYNAMICALLY,
                export_by_variant={"r26_s32": _HYBRID_EXPORT, "r50_l32": _HYBRID_EXPORT},
            ),
        ),
    )
)
