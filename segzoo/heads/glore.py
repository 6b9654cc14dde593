"""The Global Reasoning unit (Chen et al., CVPR 2019) and the FCN head with one unit that its Cityscapes models use."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.heads.fcn import FCNHead


class GraphConv(nn.Module):
    """One graph convolution on ``(N, num_state, num_node)`` node features: a learned adjacency over the nodes
    (``conv1``, with the identity added) and a state update (``conv2``) after ReLU."""

    def __init__(self, num_state: int, num_node: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(num_node, num_node, 1)
        self.conv2 = nn.Conv1d(num_state, num_state, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x.transpose(1, 2)).transpose(1, 2) + x
        return self.conv2(F.relu(h))


class GloReUnit2d(nn.Module):
    """Project features onto ``num_mid`` graph nodes of ``2 * num_mid`` states, reason with a graph
    convolution, project back and add to the input through a BatchNorm (eps 1e-4, zero-initialized scale).

    ``normalize`` divides the projected node features by the number of pixels,
    which upstream recommends when the input size varies. Keys and arguments
    are upstream's ``GloRe_Unit_2D(num_in, num_mid, normalize)``.
    """

    def __init__(self, num_in: int, num_mid: int, normalize: bool = False) -> None:
        super().__init__()
        self.normalize = normalize
        self.num_state = 2 * num_mid
        self.num_node = num_mid
        self.conv_state = nn.Conv2d(num_in, self.num_state, 1)
        self.conv_proj = nn.Conv2d(num_in, self.num_node, 1)
        self.gcn = GraphConv(self.num_state, self.num_node)
        self.conv_extend = nn.Conv2d(self.num_state, num_in, 1, bias=False)
        self.blocker = nn.BatchNorm2d(num_in, eps=1e-4)
        nn.init.zeros_(self.blocker.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        state = self.conv_state(x).reshape(n, self.num_state, -1)  # (n, S, hw)
        projection = self.conv_proj(x).reshape(n, self.num_node, -1)  # (n, N, hw)
        nodes = torch.bmm(state, projection.transpose(1, 2))  # (n, S, N)
        if self.normalize:
            nodes = nodes * (1.0 / state.shape[2])
        nodes = self.gcn(nodes)
        state = torch.bmm(nodes, projection).view(n, self.num_state, *x.shape[2:])
        return x + self.blocker(self.conv_extend(state))

    def extra_repr(self) -> str:
        return f"nodes={self.num_node}, states={self.num_state}, normalize={self.normalize}"


class GloReFCNHead(FCNHead):
    """A GloRe unit on the input feature map, then the FCN head (3x3 conv-BN-ReLU, dropout, classifier)."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        num_mid: int,
        normalize: bool = False,
        in_index: int = -1,
        dropout: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__(in_channels, channels, num_classes, in_index, 1, dropout, align_corners)
        self.glore = GloReUnit2d(in_channels, num_mid, normalize)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return super().features(self.glore(x))
