"""EMANet's head (Li et al., ICCV 2019): expectation-maximization attention between two 3x3 conv-BN-ReLU layers."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.backbones.resnet_dilated import msra_fill
from segzoo.heads.base import DecodeHead

# Added to norms and sums before dividing, as upstream.
_EPS = 1e-6


def _l2_normalize(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x / (_EPS + x.norm(dim=dim, keepdim=True))


class ConvNorm(nn.Conv2d):
    """A bias-free conv whose BatchNorm is its ``norm`` submodule, optionally followed by ReLU.

    detectron2's ``Conv2d(..., norm=...)``: the checkpoint keys are
    ``<name>.weight`` and ``<name>.norm.*``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        padding: int = 0,
        bn_momentum: float = 0.1,
        relu: bool = True,
        norm: Literal["BN", "SyncBN"] = "BN",
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, bias=False)
        norm_layer = nn.SyncBatchNorm if norm == "SyncBN" else nn.BatchNorm2d
        self.norm = norm_layer(out_channels, momentum=bn_momentum)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(super().forward(x))
        return F.relu(x, inplace=True) if self.relu else x


class EMAUnit(nn.Module):
    """Expectation-maximization attention on ``channels``-wide features with ``bases`` bases.

    Arguments in the upstream constructor's order (``c, k, iteration_num,
    em_mom, norm, bn_mom``). The features are reconstructed from ``bases``
    unit-norm bases refined by ``iterations`` EM steps that start from the
    ``mu`` buffer, in eval mode too. In training mode the buffer moves towards
    the batch's refined bases with ``momentum`` (no renormalization), and a
    loaded ``mu`` is used as stored.
    """

    def __init__(
        self,
        channels: int,
        bases: int,
        iterations: int = 3,
        momentum: float = 0.9,
        norm: Literal["BN", "SyncBN"] = "BN",
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if iterations < 1:
            raise ValueError(f"EMAUnit needs at least one EM iteration, got iterations={iterations}")
        self.iterations = iterations
        self.momentum = momentum
        mu = torch.empty(1, channels, bases)
        nn.init.normal_(mu, 0.0, math.sqrt(2.0 / bases))
        self.register_buffer("mu", _l2_normalize(mu, dim=1))
        self.conv1 = nn.Conv2d(channels, channels, 1)
        self.conv2 = ConvNorm(channels, channels, 1, bn_momentum=bn_momentum, relu=False, norm=norm)
        msra_fill(self.conv1)
        msra_fill(self.conv2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        x = self.conv1(x)
        b, c, h, w = x.shape
        x = x.reshape(b, c, h * w)
        mu = self.mu.repeat(b, 1, 1)
        detached = x.detach()
        for _ in range(self.iterations):
            responsibilities = torch.softmax(torch.bmm(x.transpose(1, 2), mu), dim=2)  # (b, n, k)
            weights = responsibilities / (_EPS + responsibilities.sum(dim=1, keepdim=True))
            mu = _l2_normalize(torch.bmm(detached, weights.detach()), dim=1)  # (b, c, k)
        x = torch.bmm(mu, responsibilities.transpose(1, 2)).view(b, c, h, w)
        x = self.conv2(F.relu(x, inplace=True))
        x = F.relu(x + identity, inplace=True)
        if self.training:
            with torch.no_grad():
                self.mu.mul_(self.momentum).add_(mu.mean(dim=0, keepdim=True), alpha=1.0 - self.momentum)
        return x

    def extra_repr(self) -> str:
        return f"bases={self.mu.shape[2]}, iterations={self.iterations}, momentum={self.momentum}"


class EMAHead(DecodeHead):
    """3x3 conv-BN-ReLU to ``channels``, the EM attention unit, 3x3 conv-BN-ReLU to ``predictor_channels``,
    dropout and the classifier; the segmentor upsamples with ``align_corners=True`` as upstream does.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        in_index: int = -1,
        bases: int = 64,
        iterations: int = 3,
        em_momentum: float = 0.9,
        bn_momentum: float = 0.1,
        predictor_channels: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(predictor_channels, num_classes, in_index, dropout, align_corners=True)
        self.reduced_conv = ConvNorm(in_channels, channels, 3, padding=1, bn_momentum=bn_momentum)
        self.emau = EMAUnit(channels, bases, iterations, em_momentum, bn_momentum=bn_momentum)
        self.predictor_conv = ConvNorm(channels, predictor_channels, 3, padding=1, bn_momentum=bn_momentum)
        for conv in (self.reduced_conv, self.predictor_conv, self.conv_seg):
            msra_fill(conv)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor_conv(self.emau(self.reduced_conv(x)))
