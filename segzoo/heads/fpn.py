"""Semantic FPN (Kirillov et al., CVPR 2019): the FPN neck and the panoptic-FPN semantic head."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.heads.base import DecodeHead
from segzoo.layers import ConvNormAct


class FPNNeck(nn.Module):
    """Feature pyramid: 1x1 laterals, nearest-neighbour top-down sum, 3x3 output convs (no norm, no act)."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(ConvNormAct(c, out_channels, 1, norm=False, act=False) for c in in_channels)
        self.fpn_convs = nn.ModuleList(
            ConvNormAct(out_channels, out_channels, 3, padding=1, norm=False, act=False) for _ in in_channels
        )

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[2:], mode="nearest"
            )
        return [conv(x) for conv, x in zip(self.fpn_convs, laterals)]


class Upsample2x(nn.Module):
    """Bilinear 2x upsampling to exactly twice the input size."""

    def __init__(self, align_corners: bool) -> None:
        super().__init__()
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (2 * x.shape[2], 2 * x.shape[3])
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)


class FPNHead(DecodeHead):
    """Each pyramid level goes through 3x3 conv-BN-ReLU + 2x upsampling until stride 4; the levels are summed."""

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int,
        num_classes: int,
        feature_strides: Sequence[int] = (4, 8, 16, 32),
        dropout: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__(channels, num_classes, list(range(len(in_channels))), dropout, align_corners)
        self.scale_heads = nn.ModuleList()
        for in_ch, stride in zip(in_channels, feature_strides):
            steps = max(1, int(math.log2(stride) - math.log2(feature_strides[0])))
            layers: list[nn.Module] = []
            for k in range(steps):
                layers.append(ConvNormAct(in_ch if k == 0 else channels, channels, 3, padding=1))
                if stride != feature_strides[0]:
                    layers.append(Upsample2x(align_corners))
            self.scale_heads.append(nn.Sequential(*layers))

    def features(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        out = self.scale_heads[0](inputs[0])
        for head, x in zip(self.scale_heads[1:], inputs[1:]):
            out = out + F.interpolate(head(x), size=out.shape[2:], mode="bilinear", align_corners=self.align_corners)
        return out
