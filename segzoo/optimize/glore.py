"""GloRe's head on the fast path: the unit's 1x1 projections commuted with its graph products, its blocker folded,
and the FCN head's wide 3x3 convolutions run by Winograd."""

from __future__ import annotations

import torch

from segzoo.heads.glore import GloReFCNHead, GloReUnit2d
from segzoo.optimize import EvalOnly, Rewrite
from segzoo.optimize.folding import conv_bn_rewrite
from segzoo.optimize.resnet import FLOAT32, rewrite_winograd_convs


class FastGloReUnit2d(EvalOnly, GloReUnit2d):
    """The GloRe unit with its state and extension 1x1 convs moved onto the ``(C, nodes)`` side of the graph.

    ``conv_state`` (``W_s x + b_s``) only enters through ``state @ proj^T``, which equals
    ``W_s (x proj^T) + b_s (proj 1)^T``; ``conv_extend`` (``W_e``, the folded blocker's shift ``b_e``) only through
    ``W_e (nodes proj) + b_e = (W_e nodes) proj + b_e``. Both products then run on ``(C, nodes)`` matrices
    instead of ``(C, pixels)`` maps: at 1/8 of 512x512 (4096 pixels, 512 nodes, 2048 channels) 15 instead of 26
    GMACs, and the residual sum is the accumulator of the last product. Computed channels-last.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, channels, height, width = x.shape
        pixels = x.permute(0, 2, 3, 1).reshape(n, height * width, channels)  # a view when x is channels-last
        projection = self.conv_proj(x).permute(0, 2, 3, 1).reshape(n, height * width, self.num_node)
        state_weight = self.conv_state.weight[:, :, 0, 0]
        pooled = torch.bmm(pixels.transpose(1, 2), projection)  # (n, C, N)
        node_sums = projection.sum(dim=1, keepdim=True)  # (n, 1, N)
        nodes = torch.baddbmm(self.conv_state.bias.view(1, -1, 1) * node_sums, state_weight.expand(n, -1, -1), pooled)
        if self.normalize:
            nodes = nodes * (1.0 / pixels.shape[1])
        extended = torch.matmul(self.conv_extend.weight[:, :, 0, 0], self.gcn(nodes))  # (n, C, N)
        out = torch.baddbmm(pixels, projection, extended.transpose(1, 2)).add_(self.conv_extend.bias)
        return out.view(n, height, width, channels).permute(0, 3, 1, 2)


REWRITES = (
    conv_bn_rewrite(GloReUnit2d, ("conv_extend", "blocker")),
    Rewrite("GloRe unit", "rewrite blocks", (GloReUnit2d,), FastGloReUnit2d.from_module, devices=("cpu",)),
    Rewrite(
        "GloRe FCN head Winograd 3x3 convs",
        "rewrite blocks",
        (GloReFCNHead,),
        rewrite_winograd_convs,
        devices=("cpu",),
        dtypes=FLOAT32,
    ),
)
