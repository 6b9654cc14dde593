"""FCN head (Long et al., CVPR 2015), used as the auxiliary head of UperNet models."""

from __future__ import annotations

import torch
from torch import nn

from segzoo.heads.base import DecodeHead
from segzoo.layers import ConvNormAct


class FCNHead(DecodeHead):
    """``num_convs`` 3x3 conv-BN-ReLU layers on one feature map, then the classifier."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        in_index: int,
        num_convs: int = 1,
        dropout: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__(channels, num_classes, in_index, dropout, align_corners)
        self.convs = nn.Sequential(
            *(ConvNormAct(in_channels if i == 0 else channels, channels, 3, padding=1) for i in range(num_convs))
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)
