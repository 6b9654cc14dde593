"""Folding: the arithmetic that folds BatchNorms into the convolutions beside them, the rewrites that fold the
conv-BN pairs (of the shared conv-norm-act unit and of ``nn.Sequential`` runs here, of other module types
where :func:`conv_bn_rewrite` declares them) and freeze the hybrid ViTs' weight standardization into plain
convs. Each rewrite keeps the eval-mode function."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_weights

from segzoo.layers import ConvNormAct
from segzoo.optimize import PrefersChannelsLast, Rewrite


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


def rewrite_conv_bn_pairs(module: nn.Module, pairs: tuple[tuple[str, str], ...]) -> nn.Module:
    """Fold the BatchNorms at the ``(conv path, norm path)`` pairs of ``module`` into their convs, in place."""
    for conv_path, bn_path in pairs:
        bn = getattr(module, bn_path) if "." not in bn_path else module.get_submodule(bn_path)
        if isinstance(bn, _BatchNorm):  # None where the unit was built without a norm
            fold_bn_after(module.get_submodule(conv_path), bn)
            module.set_submodule(bn_path, nn.Identity())
    return module


def conv_bn_rewrite(target: type, *pairs: tuple[str, str]) -> Rewrite:
    """The rewrite folding the conv-BN pairs of ``target`` modules: ``(conv path, norm path)``, ``""`` for the
    module itself."""
    return Rewrite(
        f"{target.__name__} conv-BN pairs", "fold norms", (target,), partial(rewrite_conv_bn_pairs, pairs=pairs)
    )


def rewrite_sequential_conv_bn(sequential: nn.Sequential) -> nn.Sequential:
    """Fold every BatchNorm that directly follows a plain conv in ``sequential``, in place."""
    children = list(sequential.named_children())
    return rewrite_conv_bn_pairs(
        sequential,
        tuple(
            (name, next_name)
            for (name, child), (next_name, next_child) in zip(children, children[1:])
            if type(child) is nn.Conv2d and isinstance(next_child, _BatchNorm)
        ),
    )


def rewrite_standardized_conv(module: nn.Module) -> nn.Module:
    """A plain conv holding the standardized weights of timm's weight-standardized ``module``."""
    from timm.layers import Conv2dSame  # noqa: PLC0415 (timm is loaded only by models that hold its layers)

    same_pad = getattr(module, "same_pad", False)
    conv = (Conv2dSame if same_pad else nn.Conv2d)(
        module.in_channels,
        module.out_channels,
        module.kernel_size,
        stride=module.stride,
        padding=0 if same_pad else module.padding,
        dilation=module.dilation,
        groups=module.groups,
        bias=module.bias is not None,
        device=module.weight.device,
        dtype=module.weight.dtype,
    )
    with torch.no_grad():
        weight = module.weight.reshape(1, module.out_channels, -1)
        conv.weight.copy_(F.batch_norm(weight, None, None, training=True, eps=module.eps).view_as(conv.weight))
        if module.bias is not None:
            conv.bias.copy_(module.bias)
    return conv


REWRITES = (
    conv_bn_rewrite(ConvNormAct, ("conv", "bn")),
    Rewrite("nn.Sequential conv-BN runs", "fold norms", (nn.Sequential,), rewrite_sequential_conv_bn),
    Rewrite(
        "timm's weight-standardized convs",
        "fold norms",
        ("timm.layers.std_conv.StdConv2d", "timm.layers.std_conv.StdConv2dSame"),
        rewrite_standardized_conv,
    ),
)

CHANNELS_LAST = (PrefersChannelsLast((nn.Conv2d,), ("cpu",), dtypes=(torch.bfloat16,)),)
"""In bf16 on the CPU every part with a convolution runs channels-last: oneDNN's bf16 convolutions (AMX) take
channels-last operands and reorder any other layout on every call (``benchmarks/RESULTS.md``)."""
