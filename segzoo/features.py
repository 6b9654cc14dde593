"""An entry's encoder as a multi-scale feature extractor, the way timm's ``features_only`` models are.

Each backbone says which features it returns, and what they are (stages, channels, reductions, the default
``out_indices``), with a ``feature_extractor(out_indices)`` method (timm's ``feature_info`` idea);
:func:`segzoo.create_backbone` calls it. The README's "Backbones for your own head" lists them by family.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


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


def stage_features(
    backbone: nn.Module,
    out_indices: Sequence[int] | None,
    modules: Sequence[str],
    reductions: Sequence[int],
) -> tuple[FeatureInfo, tuple[int, ...]]:
    """Features of a backbone with one output per stage: what ``out_indices`` (stage numbers; default all)
    picks, and the positions of those stages in the backbone's output list."""
    count = len(modules)
    indices = tuple(range(count)) if out_indices is None else tuple(out_indices)
    if not indices or any(not 0 <= i < count for i in indices):
        raise ValueError(f"out_indices {indices} must be stage numbers in [0, {count - 1}]")
    channels = list(backbone.out_channels)
    info = FeatureInfo(
        indices,
        tuple(channels[i] for i in indices),
        tuple(reductions[i] for i in indices),
        tuple(modules[i] for i in indices),
    )
    return info, indices


def feature_extractor(backbone: nn.Module, out_indices: Sequence[int] | None) -> FeatureExtractor:
    """Wrap ``backbone`` to return the features ``out_indices`` picks; the backbone's ``feature_extractor``
    method says which those are (see this module's table)."""
    make = getattr(backbone, "feature_extractor", None)
    if make is None:
        raise ValueError(
            f"the backbone {type(backbone).__name__} does not say which features it returns "
            "(it has no feature_extractor method)"
        )
    return make(out_indices)
