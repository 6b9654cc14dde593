"""UperNet head (Xiao et al., ECCV 2018): pyramid pooling on the last stage plus an FPN over all stages."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.heads.base import DecodeHead
from segzoo.layers import ConvNormAct


class UPerHead(DecodeHead):
    """PPM on the coarsest map, bilinear top-down FPN, all levels fused at stride 4."""

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int,
        num_classes: int,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__(channels, num_classes, list(range(len(in_channels))), dropout, align_corners)
        *lateral_in, top_in = in_channels
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvNormAct(top_in, channels, 1)) for s in pool_scales
        )
        self.bottleneck = ConvNormAct(top_in + len(pool_scales) * channels, channels, 3, padding=1)
        self.lateral_convs = nn.ModuleList(ConvNormAct(c, channels, 1) for c in lateral_in)
        self.fpn_convs = nn.ModuleList(ConvNormAct(channels, channels, 3, padding=1) for _ in lateral_in)
        self.fpn_bottleneck = ConvNormAct(len(in_channels) * channels, channels, 3, padding=1)

    def _resize(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)

    def _pyramid_pooling(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [self._resize(ppm(x), x.shape[2:]) for ppm in self.psp_modules]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))

    def levels(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The FPN outputs, finest first, each at its own stride (the PPM output last)."""
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        laterals.append(self._pyramid_pooling(inputs[-1]))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + self._resize(laterals[i], laterals[i - 1].shape[2:])
        return [conv(x) for conv, x in zip(self.fpn_convs, laterals)] + [laterals[-1]]

    def fuse_levels(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """Every level resized to the finest one, concatenated, then the 3x3 ``fpn_bottleneck``. Empties
        ``levels``: the maps are freed before the convolution runs on their concatenation, as upstream does."""
        outs = [levels[0]] + [self._resize(x, levels[0].shape[2:]) for x in levels[1:]]
        levels.clear()
        fused = torch.cat(outs, dim=1)
        del outs
        return self.fpn_bottleneck(fused)

    def features(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.fuse_levels(self.levels(inputs))
