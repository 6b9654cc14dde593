"""UperNet's level fusion without the full-resolution 3x3 convolution over upsampled maps.

UperNet resizes every coarser FPN level to the finest one, concatenates them and runs a 3x3 convolution
(``fpn_bottleneck``) on the result: two thirds of the head's work at 512x512, most of it spent on maps that are
only bilinear upsamplings of coarse ones. A bilinear resize is a separable linear map ``Mh X Mw^T`` on each
channel, and a 3x3 convolution is a sum over its nine taps of a channel mix shifted by one pixel, so for a
coarse level ``x`` with tap weights ``W_ab``::

    conv3x3(resize(x)) = sum_ab shift_ab(Mh (W_ab x) Mw^T) = sum_ab (S_a Mh) (W_ab x) (S_b Mw)^T

where ``S_a Mh`` is ``Mh`` with its rows shifted by the tap's offset (zero rows past the border: the
convolution's zero padding). The channel mix now runs at the coarse level's resolution (4x, 16x and 64x fewer
pixels) and the resize-and-shift is two small dense matrix products; the finest level keeps its ordinary 3x3
convolution. The interpolation matrices are taken from ``F.interpolate`` itself, so borders and
non-integer scales are those of the eager model. Same function up to float32 rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.heads.uper import UPerHead
from segzoo.layers import ConvNormAct
from segzoo.optimize import EvalOnly, Rewrite


def interpolation_matrix(size_in: int, size_out: int, align_corners: bool, like: torch.Tensor) -> torch.Tensor:
    """The ``[size_out, size_in]`` matrix of a 1-D bilinear resize, as ``F.interpolate`` weighs it."""
    unit_signals = torch.eye(size_in, dtype=like.dtype, device=like.device).view(size_in, 1, 1, size_in)
    weights = F.interpolate(unit_signals, size=(1, size_out), mode="bilinear", align_corners=align_corners)
    return weights.view(size_in, size_out).t()


def shifted_rows(matrix: torch.Tensor, offset: int) -> torch.Tensor:
    """Row ``i`` of the result is row ``i + offset`` of ``matrix``; rows past either end are zero."""
    if offset == 0:
        return matrix
    result = torch.zeros_like(matrix)
    if offset > 0:
        result[:-offset] = matrix[offset:]
    else:
        result[-offset:] = matrix[:offset]
    return result


class UpsampledLevelsConv(EvalOnly, nn.Module):
    """The ``fpn_bottleneck`` unit (3x3 conv with its BN folded, then ReLU) applied to the finest level and the
    coarser levels resized to it, taking the levels themselves rather than their concatenation. The rewrite
    table folds the BN in an earlier phase."""

    def __init__(self, bottleneck: ConvNormAct, level_channels: int, align_corners: bool) -> None:
        super().__init__()
        conv = bottleneck.conv
        if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1) or conv.dilation != (1, 1):
            raise ValueError(f"expected UperNet's 3x3 stride-1 padding-1 fpn_bottleneck, got {conv}")
        self.align_corners = align_corners
        self.act = bottleneck.act
        weight = conv.weight.detach()
        bias = conv.bias.detach() if conv.bias is not None else None
        self.register_buffer("finest_weight", weight[:, :level_channels].contiguous())
        self.register_buffer("bias", bias)
        # per coarse level: the nine taps' channel mixes stacked, rows ordered (tap row, tap column, out channel)
        coarse = weight[:, level_channels:].unflatten(1, (-1, level_channels))  # [out, level, in, 3, 3]
        self.register_buffer("tap_mixes", coarse.permute(1, 3, 4, 0, 2).flatten(1, 3).contiguous())

    def _tap_matrices(self, size_in: int, size_out: int, like: torch.Tensor) -> list[torch.Tensor]:
        """The resize matrix shifted by each tap offset (-1, 0, +1)."""
        matrix = interpolation_matrix(size_in, size_out, self.align_corners, like)
        return [shifted_rows(matrix, offset) for offset in (-1, 0, 1)]

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        finest, *coarser = levels
        n, _, height, width = finest.shape
        out = F.conv2d(finest, self.finest_weight, self.bias, padding=1)
        channels = out.shape[1]
        rows = []  # per level: [n, 3 * h, channels * width], tap row major, the width resize and shifts done
        row_matrices = []
        for level, mix in zip(coarser, self.tap_mixes):
            h, w = level.shape[2:]
            mixed = torch.matmul(mix, level.flatten(2)).view(n, 3, 3, channels, h, w)
            mixed = mixed.permute(0, 1, 3, 4, 2, 5).reshape(n, 3 * channels * h, 3 * w)
            columns = torch.cat([m.t() for m in self._tap_matrices(w, width, level)])  # [(tap column, w), width]
            resized = torch.matmul(mixed, columns).view(n, 3, channels, h, width)
            rows.append(resized.transpose(2, 3).reshape(n, 3 * h, channels * width))
            row_matrices += self._tap_matrices(h, height, level)
        # [height, sum over levels of 3 h] @ [n, sum of 3 h, channels * width]: the height resize and row shifts
        upsampled = torch.matmul(torch.cat(row_matrices, dim=1), torch.cat(rows, dim=1))
        out += upsampled.view(n, height, channels, width).transpose(1, 2)
        return self.act(out) if self.act is not None else out


class FastUPerHead(EvalOnly, UPerHead):
    """A :class:`~segzoo.heads.UPerHead` whose ``fpn_bottleneck`` is an :class:`UpsampledLevelsConv`."""

    @classmethod
    def from_module(cls, head: UPerHead) -> FastUPerHead:
        fast = super().from_module(head)
        fast.fpn_bottleneck = UpsampledLevelsConv(
            head.fpn_bottleneck, head.fpn_convs[0].conv.out_channels, head.align_corners
        )
        return fast

    def fuse_levels(self, levels: list[torch.Tensor]) -> torch.Tensor:
        return self.fpn_bottleneck(levels)


REWRITES = (Rewrite("UperNet level fusion", "rewrite blocks", (UPerHead,), FastUPerHead.from_module),)
