"""The dilated ResNets' fast path: their conv-BN pairs folded and their dense 3x3 convolutions run by Winograd's
F(2x2, 3x3); the heads on them apply the same convolution (:mod:`segzoo.optimize.emanet`, :mod:`.glore`).

Which convolutions: every stride-1, ungrouped 3x3 convolution (dilated or not, padding equal to its dilation)
with at least :data:`MIN_WINOGRAD_CHANNELS` input and output channels, in the backbone and in the heads. Below
that width (the deep stem's 64-channel convs at 1/2 resolution, layer1) the transforms' memory traffic costs
more than the multiplies saved and mkldnn's direct convolution stays. Measured per layer against mkldnn's
channels-last convolution (512x512 input, one thread, interleaved; a loaded machine, so +-0.1): 64->64 and
64->128 at 256x256 0.3-0.4x, 64->64 at 128x128 0.3x, 128->128 at 64x64 1.1x, 256->256 at 32x32 1.6x, 512->512
at 32x32 (dilation 2-8) 1.3-1.6x, at 64x64 (dilation 4-16) 0.9-1.3x, 2048->512 at 32x32 and 64x64 1.4-1.5x
(two threads). CPU only: on a GPU cuDNN picks its own algorithm (Winograd among them) and the model is left as
it is.

Each folded bottleneck adds its shortcut into its last convolution's output in place (:class:`FastBottleneck`):
the eager sum is a new map as large as the block's output, whose fresh pages cost more than the addition.
"""

from __future__ import annotations

import torch
from torch import nn

from segzoo.backbones.resnet_dilated import Bottleneck, DilatedResNet
from segzoo.heads.ema import ConvNorm
from segzoo.optimize import EvalOnly, PrefersChannelsLast, Rewrite
from segzoo.optimize.folding import conv_bn_rewrite
from segzoo.optimize.winograd import transform_weight, winograd_conv3x3

MIN_WINOGRAD_CHANNELS = 128


class WinogradConv2d(EvalOnly, nn.Module):
    """A folded 3x3 stride-1 convolution (optionally followed by ReLU) computed by Winograd F(2x2, 3x3)."""

    def __init__(self, conv: nn.Conv2d, relu: bool = False) -> None:
        super().__init__()
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.dilation = conv.dilation[0]
        self.relu = relu
        self.register_buffer("weight", transform_weight(conv.weight.detach()))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return winograd_conv3x3(x, self.weight, self.bias, self.dilation, self.relu)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, dilation={self.dilation}, relu={self.relu}"


class FastBottleneck(EvalOnly, Bottleneck):
    """A :class:`~segzoo.backbones.resnet_dilated.Bottleneck` with its BatchNorms folded that adds the shortcut
    into the expanding convolution's output in place, then applies ReLU in place (the same sums)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out)).add_(shortcut).relu_()


def winograd_applies(conv: nn.Module) -> bool:
    """Whether ``conv`` is a dense stride-1 3x3 convolution padded by its dilation and wide enough to gain."""
    return (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and conv.padding == conv.dilation
        and conv.dilation[0] == conv.dilation[1]
        and min(conv.in_channels, conv.out_channels) >= MIN_WINOGRAD_CHANNELS
    )


def rewrite_winograd_convs(part: nn.Module) -> nn.Module:
    """Replace the wide 3x3 convolutions of ``part`` (BatchNorms folded) by :class:`WinogradConv2d`, in place."""
    for name, module in list(part.named_modules()):
        if isinstance(module, ConvNorm) and winograd_applies(module):
            part.set_submodule(name, WinogradConv2d(module, relu=module.relu))
        elif type(module) is nn.Conv2d and winograd_applies(module):
            part.set_submodule(name, WinogradConv2d(module))
    return part


FLOAT32 = (torch.float32,)
"""The dtypes Winograd runs in: its transforms cost bf16 too much accuracy, and oneDNN's direct bf16
convolution is the faster one there (``benchmarks/RESULTS.md``)."""

REWRITES = (
    conv_bn_rewrite(Bottleneck, ("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    conv_bn_rewrite(DilatedResNet, ("conv1.6", "bn1")),
    Rewrite(
        "Winograd 3x3 convs",
        "rewrite blocks",
        (DilatedResNet,),
        rewrite_winograd_convs,
        devices=("cpu",),
        dtypes=FLOAT32,
    ),
    Rewrite("bottleneck residual in place", "rewrite blocks", (Bottleneck,), FastBottleneck.from_module),
)
# Channels-last: the dilated ResNets on the CPU and the GPU, and on the CPU every part whose 3x3 convolutions run
# by Winograd (its transforms read whole channel vectors).
CHANNELS_LAST = (
    PrefersChannelsLast((DilatedResNet,), ("cpu", "cuda")),
    PrefersChannelsLast((WinogradConv2d,), ("cpu",)),
)
