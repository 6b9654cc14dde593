"""The dilated ResNets' fast path (EMANet, GloRe): their dense 3x3 convolutions by Winograd's F(2x2, 3x3).

Which convolutions: every stride-1, ungrouped 3x3 convolution (dilated or not, padding equal to its dilation)
with at least :data:`MIN_WINOGRAD_CHANNELS` input and output channels, in the backbone and in the heads. Below
that width (the deep stem's 64-channel convs at 1/2 resolution, layer1) the transforms' memory traffic costs
more than the multiplies saved and mkldnn's direct convolution stays. CPU only: on a GPU cuDNN picks its own
algorithm (Winograd among them) and the model is left as it is.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.backbones.resnet_dilated import DilatedResNet
from segzoo.heads.ema import ConvNorm, EMAHead
from segzoo.heads.glore import GloReFCNHead
from segzoo.optimize.winograd import transform_weight, winograd_conv3x3

MIN_WINOGRAD_CHANNELS = 128


class WinogradConv2d(nn.Module):
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


def optimize_dilated_resnets(model: nn.Module) -> nn.Module:
    """Replace the wide 3x3 convolutions of the dilated ResNets and the EMA / GloRe FCN heads, in place.

    Run after BatchNorm folding: a :class:`~segzoo.heads.ema.ConvNorm` must hold its norm as ``nn.Identity``.
    """
    if any(p.device.type != "cpu" for p in model.parameters()):
        return model
    for part in list(model.modules()):
        if not isinstance(part, (DilatedResNet, EMAHead, GloReFCNHead)):
            continue
        for name, module in list(part.named_modules()):
            if not winograd_applies(module):
                continue
            if isinstance(module, ConvNorm):
                if not isinstance(module.norm, nn.Identity):
                    raise ValueError(f"fold the BatchNorm of {name} before optimize_dilated_resnets")
                part.set_submodule(name, WinogradConv2d(module, relu=module.relu))
            elif type(module) is nn.Conv2d:
                part.set_submodule(name, WinogradConv2d(module))
    return model
