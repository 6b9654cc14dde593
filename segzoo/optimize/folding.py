"""Folding: BatchNorms into the convolutions beside them, MogaNet's elementwise tails into its 1x1 convs, and the
hybrid ViTs' weight standardization into plain convs. Each rewrite keeps the eval-mode function."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_weights

from segzoo.backbones.moganet import DownsampleEmbed
from segzoo.backbones.resnet_dilated import Bottleneck, DilatedResNet
from segzoo.heads.ema import ConvNorm
from segzoo.heads.glore import GloReUnit2d
from segzoo.layers import ConvNormAct

# (conv, norm) submodule paths of the conv-BN pairs inside each module type; "" is the module itself.
_CONV_BN_PAIRS: dict[type, tuple[tuple[str, str], ...]] = {
    Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    DilatedResNet: (("conv1.6", "bn1"),),
    ConvNormAct: (("conv", "bn"),),
    ConvNorm: (("", "norm"),),
    DownsampleEmbed: (("projection", "norm"),),
    GloReUnit2d: (("conv_extend", "blocker"),),
}


def bn_affine(bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode BatchNorm as ``scale * x + shift``, per channel, in float64."""
    var, mean = bn.running_var.double(), bn.running_mean.double()
    weight = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    bias = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = weight / torch.sqrt(var + bn.eps)
    return scale, bias - mean * scale


def set_conv(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Give ``conv`` new weight and bias (created when it had none), cast back to its dtype."""
    dtype = conv.weight.dtype
    conv.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(dtype), requires_grad=False)


def conv_params(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``conv``'s weight and bias (zeros when it has none), in float64."""
    weight = conv.weight.double()
    bias = conv.bias.double() if conv.bias is not None else weight.new_zeros(weight.shape[0])
    return weight, bias


def scale_outputs(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor | None = None) -> None:
    """``conv`` followed by ``scale * y + shift`` per output channel, as one conv."""
    weight, bias = conv_params(conv)
    shift = torch.zeros_like(scale) if shift is None else shift
    set_conv(conv, weight * scale.view(-1, 1, 1, 1), bias * scale + shift)


def fold_bn_after(conv: nn.Conv2d, bn: _BatchNorm) -> None:
    """conv -> BN as one conv (torch's own conv-BN folding arithmetic)."""
    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    set_conv(conv, weight.detach(), bias.detach())


def fold_bn_before(bn: _BatchNorm, conv: nn.Conv2d) -> None:
    """BN -> 1x1 conv as one conv; exact only without padding, which a 1x1 conv of MogaNet never has."""
    if conv.kernel_size != (1, 1) or conv.padding != (0, 0) or conv.groups != 1:
        raise ValueError(f"a BatchNorm folds into a following conv only when it is a dense 1x1 one, got {conv}")
    scale, shift = bn_affine(bn)
    weight, bias = conv_params(conv)
    set_conv(conv, weight * scale.view(1, -1, 1, 1), bias + weight[:, :, 0, 0] @ shift)


def fold_conv_bn_pairs(model: nn.Module) -> None:
    """Fold the conv-BN pairs of the known module types and of ``nn.Sequential`` runs."""
    for module in list(model.modules()):
        pairs = list(_CONV_BN_PAIRS.get(type(module), ()))
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            pairs += [
                (name, next_name) for (name, child), (next_name, next_child) in zip(children, children[1:])
                if type(child) is nn.Conv2d and isinstance(next_child, _BatchNorm)
            ]
        for conv_path, bn_path in pairs:
            bn = getattr(module, bn_path) if "." not in bn_path else module.get_submodule(bn_path)
            if isinstance(bn, _BatchNorm):  # None where the unit was built without a norm
                fold_bn_after(module.get_submodule(conv_path), bn)
                module.set_submodule(bn_path, nn.Identity())


def freeze_standardized_convs(model: nn.Module) -> None:
    """Replace timm's weight-standardized convs by plain ones holding the standardized weights."""
    from timm.layers import Conv2dSame, StdConv2d, StdConv2dSame

    for name, module in list(model.named_modules()):
        if not isinstance(module, (StdConv2d, StdConv2dSame)):
            continue
        same_pad = getattr(module, "same_pad", False)
        conv = (Conv2dSame if same_pad else nn.Conv2d)(
            module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
            padding=0 if same_pad else module.padding, dilation=module.dilation, groups=module.groups,
            bias=module.bias is not None, device=module.weight.device, dtype=module.weight.dtype,
        )
        with torch.no_grad():
            weight = module.weight.reshape(1, module.out_channels, -1)
            conv.weight.copy_(F.batch_norm(weight, None, None, training=True, eps=module.eps).view_as(conv.weight))
            if module.bias is not None:
                conv.bias.copy_(module.bias)
        model.set_submodule(name, conv)
