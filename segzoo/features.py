"""An entry's encoder as a multi-scale feature extractor, the way timm's ``features_only`` models are.

| family | features (``out_indices``) | channels | reduction | default |
|---|---|---|---|---|
| MogaNet (``moganet_*``) | stages 0-3 (``norm1``-``norm4``) | XT 32/64/96/192, T 32/64/128/256, S 64/128/320/512, B 64/160/320/512, L 64/160/320/640 | 4, 8, 16, 32 | all four |
| EurNet (``eurnet_*``) | stages 0-3 | T 96/192/384/768, S 96/192/384/768, B 128/256/512/1024 | 4, 8, 16, 32 | all four |
| EMANet (``emanet_*``), GloRe (``glore_*``) | dilated ResNet ``layer1``-``layer4`` (0-3) | 256, 512, 1024, 2048 | 4, 8, 8, 8 (output stride 8) or 4, 8, 16, 16 (output stride 16: EMANet Cityscapes) | all four |
| RegionProxy (``regproxy_*``) | ViT token maps: ``-1`` the embedded tokens, ``i`` block ``i`` (the last block after the final norm) | the width (Ti 192, S 384, B 768, L 1024) | the patch size (16, or 32 for the hybrids) | the two maps the entry's head reads |
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from segzoo.backbones import DilatedResNet
from segzoo.zoo import ModelInfo


@dataclass(frozen=True)
class FeatureInfo:
    """What each returned feature map is: like timm's ``FeatureInfo`` (``channels()``, ``reduction()``, ...)."""

    out_indices: tuple[int, ...]
    channels_per_index: tuple[int, ...]
    reductions: tuple[int, ...]
    modules: tuple[str, ...]

    def channels(self, idx: int | None = None) -> list[int] | int:
        return list(self.channels_per_index) if idx is None else self.channels_per_index[idx]

    def reduction(self, idx: int | None = None) -> list[int] | int:
        return list(self.reductions) if idx is None else self.reductions[idx]

    def module_name(self, idx: int | None = None) -> list[str] | str:
        return list(self.modules) if idx is None else self.modules[idx]

    def get_dicts(self) -> list[dict[str, object]]:
        return [
            {"index": i, "num_chs": c, "reduction": r, "module": m}
            for i, c, r, m in zip(self.out_indices, self.channels_per_index, self.reductions, self.modules)
        ]

    def __len__(self) -> int:
        return len(self.out_indices)


class FeatureExtractor(nn.Module):
    """An encoder returning the feature maps ``feature_info`` describes, as a list of ``(N, C, H/r, W/r)``."""

    def __init__(self, backbone: nn.Module, feature_info: FeatureInfo, picks: Sequence[int]) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_info = feature_info
        self._picks = tuple(picks)  # positions in the backbone's output list

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = self.backbone(images)
        return [features[i] for i in self._picks]


def _stage_features(backbone: nn.Module, out_indices: Sequence[int] | None, modules: Sequence[str],
                    reductions: Sequence[int]) -> FeatureExtractor:
    count = len(modules)
    indices = tuple(range(count)) if out_indices is None else tuple(out_indices)
    if not indices or any(not 0 <= i < count for i in indices):
        raise ValueError(f"out_indices {indices} must be stage numbers in [0, {count - 1}]")
    channels = list(backbone.out_channels)
    info = FeatureInfo(
        indices, tuple(channels[i] for i in indices), tuple(reductions[i] for i in indices),
        tuple(modules[i] for i in indices),
    )
    if isinstance(backbone, DilatedResNet):
        backbone.out_indices = indices  # compute only the stages asked for
        return FeatureExtractor(backbone, info, range(len(indices)))
    return FeatureExtractor(backbone, info, indices)


def _resnet_reductions(backbone: DilatedResNet) -> tuple[int, ...]:
    stride = backbone.output_stride
    return (4, 8, min(16, stride), stride)


def _vit_features(backbone: nn.Module, patch_size: int, out_indices: Sequence[int] | None) -> FeatureExtractor:
    depth = len(backbone.blocks)
    indices = tuple(backbone.out_indices if out_indices is None else out_indices)
    if not indices or any(not -1 <= i < depth for i in indices) or list(indices) != sorted(set(indices)):
        raise ValueError(f"out_indices {indices} must be increasing ViT layers in [-1, {depth - 1}] "
                         "(-1: the embedded tokens, i: block i)")
    backbone.out_indices = indices  # the ViT returns exactly these token maps
    width = backbone.pos_embed.shape[-1]
    modules = tuple("patch_embed" if i == -1 else f"blocks.{i}" for i in indices)
    info = FeatureInfo(indices, (width,) * len(indices), (patch_size,) * len(indices), modules)
    return FeatureExtractor(backbone, info, range(len(indices)))


STAGE_MODULES = {
    "moganet": ("norm1", "norm2", "norm3", "norm4"),
    "eurnet": ("norm0", "norm1", "norm2", "norm3"),
    "emanet": ("layer1", "layer2", "layer3", "layer4"),
    "glore": ("layer1", "layer2", "layer3", "layer4"),
}


def feature_extractor(backbone: nn.Module, info: ModelInfo, out_indices: Sequence[int] | None) -> FeatureExtractor:
    """Wrap ``backbone``, the encoder of entry ``info``, to return the features ``out_indices`` picks."""
    if info.family == "regproxy":
        from segzoo.backbones.vit import VIT_ARCHS

        return _vit_features(backbone, VIT_ARCHS[info.arch_args["arch"]].patch_size, out_indices)
    if info.family not in STAGE_MODULES:
        raise ValueError(f"no feature extractor for the family {info.family!r}")
    reductions = _resnet_reductions(backbone) if isinstance(backbone, DilatedResNet) else (4, 8, 16, 32)
    return _stage_features(backbone, out_indices, STAGE_MODULES[info.family], reductions)


def create_backbone(
    name: str,
    pretrained: bool | Literal["imagenet"] = True,
    out_indices: Sequence[int] | None = None,
    **kwargs: object,
) -> FeatureExtractor:
    """The encoder of entry ``name`` returning multi-scale features, like timm's ``features_only`` models.

    ``pretrained=True`` loads the encoder's part of the entry's segmentation
    weights, ``"imagenet"`` the ImageNet classification file the paper's
    training starts from (:func:`segzoo.registry.load_imagenet_backbone`),
    ``False`` leaves it randomly initialized. ``out_indices`` picks the
    features (see this module's table: stages 0-3 for the CNNs and EurNet, ViT
    layers for RegionProxy; default as the table says). The result has a
    ``feature_info`` with ``channels()``, ``reduction()`` and ``module_name()``
    per returned map, and is in eval mode. Other keyword arguments go to
    :func:`segzoo.create_model` (e.g. ``checkpoint_path``, ``progress``).
    """
    from segzoo.registry import create_model, load_imagenet_backbone, model_info

    if pretrained not in (True, False, "imagenet"):
        raise ValueError(f"pretrained must be True, False or 'imagenet', got {pretrained!r}")
    info = model_info(name)
    model = create_model(info.name, pretrained=pretrained is True, **kwargs)
    if pretrained == "imagenet":
        load_imagenet_backbone(model, info.name)
    extractor = feature_extractor(model.backbone, info, out_indices)
    extractor.info = info
    return extractor.eval()
