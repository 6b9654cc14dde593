"""RegionProxy's head (Zhang et al., "Semantic Segmentation by Early Region Proxy", CVPR 2022).

Every ViT token is a region proxy: a linear classifier gives it class logits, and an affinity branch on a
middle layer's tokens tells each of the ``region_res`` sub-pixels of the region how much it belongs to each
of the 3x3 neighbouring regions. A pixel's logits are the affinity-weighted mix of its neighbours' logits, so
the output has ``region_res`` times the token grid's resolution.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.heads.base import DecodeHead
from segzoo.layers import ConvNormAct

NEIGHBOURS = 9  # the 3x3 neighbourhood, row-major: top row first, centre at 4


def _depthwise_conv_bn_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
            bn=nn.BatchNorm2d(channels),
            act=nn.ReLU(inplace=True),
        )
    )


class DepthwiseSeparableConvNormAct(nn.Module):
    """3x3 depthwise conv-BN-ReLU, then 1x1 conv-BN-ReLU (mmcv's ``DepthwiseSeparableConvModule`` names)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.depthwise_conv = _depthwise_conv_bn_relu(in_channels)
        self.pointwise_conv = ConvNormAct(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class ProxyHead(DecodeHead):
    """Region-proxy decoding of ``(middle, last)`` token maps into logits at ``region_res`` x their resolution.

    ``conv_seg`` is the token classifier (upstream's ``mlp``, a linear layer; here the equivalent 1x1 conv
    so that it is named and shaped like every segzoo classifier). The affinity of a neighbour outside the
    image is -inf before the softmax over the nine neighbours, as upstream does.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        region_res: tuple[int, int] = (4, 4),
        in_index: Sequence[int] = (-2, -1),
    ) -> None:
        super().__init__(in_channels, num_classes, in_index, dropout=0.0)
        self.region_res = tuple(region_res)
        self.affinity_head = nn.Sequential(
            DepthwiseSeparableConvNormAct(in_channels, channels),
            ConvNormAct(channels, NEIGHBOURS * self.region_res[0] * self.region_res[1], 1, norm=False, act=False),
        )

    def affinity(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 9, rh * rw, H, W)``: each sub-pixel's softmax weights over the 3x3 neighbouring regions."""
        n, _, h, w = x.shape
        logits = self.affinity_head(x).view(n, NEIGHBOURS, -1, h, w)
        # a neighbour is outside the image where unfolding ones with zero padding gives 0
        outside = F.unfold(x.new_ones(1, 1, h, w), 3, padding=1).view(NEIGHBOURS, 1, h, w) == 0
        return logits.masked_fill_(outside, float("-inf")).softmax(dim=1)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        middle, last = (inputs[i] for i in self.in_index)
        n, _, h, w = last.shape
        rh, rw = self.region_res
        affinity = self.affinity(middle).view(n, NEIGHBOURS, rh, rw, h, w)
        token_logits = self.conv_seg(last)
        neighbour_logits = F.unfold(token_logits, 3, padding=1).view(n, -1, NEIGHBOURS, h, w)
        # channels-last result: the segmentor's bilinear upsampling to the image runs about twice as fast on it
        pixels = torch.einsum("bnijhw,bknhw->bhiwjk", affinity, neighbour_logits)
        return pixels.reshape(n, h * rh, w * rw, -1).permute(0, 3, 1, 2)
