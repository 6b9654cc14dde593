"""What every decode head shares: input selection, dropout and the 1x1 classifier."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class DecodeHead(nn.Module):
    """Base for decode heads.

    Subclasses implement :meth:`features` on the inputs picked by ``in_index``;
    this class applies dropout and the ``conv_seg`` classifier, the only layer
    that depends on the number of classes.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        in_index: int | Sequence[int],
        dropout: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.in_index = in_index
        self.align_corners = align_corners
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def features(self, inputs: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        if isinstance(self.in_index, int):
            selected = inputs[self.in_index]
        else:
            selected = [inputs[i] for i in self.in_index]
        return self.conv_seg(self.dropout(self.features(selected)))
