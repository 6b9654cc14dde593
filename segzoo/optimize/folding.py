"""Folding: BatchNorms into the convolutions beside them, MogaNet's elementwise tails into its 1x1 convs, and the
hybrid ViTs' weight standardization into plain convs. Each rewrite keeps the eval-mode function."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_weights

from segzoo.backbones.moganet import DownsampleEmbed, MogaBlock, MogaNet
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


def _bn_affine(bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode BatchNorm as ``scale * x + shift``, per channel, in float64."""
    var, mean = bn.running_var.double(), bn.running_mean.double()
    weight = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    bias = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = weight / torch.sqrt(var + bn.eps)
    return scale, bias - mean * scale


def _set_conv(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Give ``conv`` new weight and bias (created when it had none), cast back to its dtype."""
    dtype = conv.weight.dtype
    conv.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(dtype), requires_grad=False)


def _conv_params(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``conv``'s weight and bias (zeros when it has none), in float64."""
    weight = conv.weight.double()
    bias = conv.bias.double() if conv.bias is not None else weight.new_zeros(weight.shape[0])
    return weight, bias


def _scale_outputs(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor | None = None) -> None:
    """``conv`` followed by ``scale * y + shift`` per output channel, as one conv."""
    weight, bias = _conv_params(conv)
    shift = torch.zeros_like(scale) if shift is None else shift
    _set_conv(conv, weight * scale.view(-1, 1, 1, 1), bias * scale + shift)


def _fold_bn_after(conv: nn.Conv2d, bn: _BatchNorm) -> None:
    """conv -> BN as one conv (torch's own conv-BN folding arithmetic)."""
    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    _set_conv(conv, weight.detach(), bias.detach())


def _fold_bn_before(bn: _BatchNorm, conv: nn.Conv2d) -> None:
    """BN -> 1x1 conv as one conv; exact only without padding, which a 1x1 conv of MogaNet never has."""
    if conv.kernel_size != (1, 1) or conv.padding != (0, 0) or conv.groups != 1:
        raise ValueError(f"a BatchNorm folds into a following conv only when it is a dense 1x1 one, got {conv}")
    scale, shift = _bn_affine(bn)
    weight, bias = _conv_params(conv)
    _set_conv(conv, weight * scale.view(1, -1, 1, 1), bias + weight[:, :, 0, 0] @ shift)


class FoldedMogaBlock(nn.Module):
    """A :class:`~segzoo.backbones.moganet.MogaBlock` with its norms, layer scales and element scales folded,
    optionally followed by the stage's closing BatchNorm (folded too).

    With ``n1 = a1 x + b1`` (``norm1``), the gated aggregation's shortcut and layer scale give
    ``y = (1 + ls1 a1) x + ls1 (proj_2(...) + b1)``; the FFN's ``fc2((1 + s) h - s gelu(d))`` is
    ``fc2'(h) - (W2 s) gelu(d)``, a one-channel map times a vector on the narrow output.
    """

    def __init__(self, block: MogaBlock, closing_norm: _BatchNorm | None = None) -> None:
        super().__init__()
        attn, mlp = block.attn, block.mlp
        self.proj_1, self.gate, self.value = attn.proj_1, attn.gate, attn.value
        self.proj_2, self.fc1, self.dwconv, self.decompose, self.fc2 = (
            attn.proj_2, mlp.fc1, mlp.dwconv, mlp.decompose, mlp.fc2
        )
        layer_scale_1 = block.layer_scale_1.detach().double().flatten()
        layer_scale_2 = block.layer_scale_2.detach().double().flatten()
        # gated aggregation: norm1 into proj_1; the shortcut (the normed input) and layer scale 1 into proj_2
        scale_1, shift_1 = _bn_affine(block.norm1)
        _fold_bn_before(block.norm1, self.proj_1)
        _scale_outputs(self.proj_2, layer_scale_1, layer_scale_1 * shift_1)
        self.register_buffer("residual_1", self._channel_vector(1 + layer_scale_1 * scale_1))
        sigma_1 = attn.sigma.scale.detach().double().flatten()
        self.register_buffer("feature_scale", self._channel_vector(1 + sigma_1))
        self.register_buffer("mean_scale", self._channel_vector(-sigma_1))
        # FFN: norm2 into fc1; the channel aggregation, layer scale 2 and the closing norm into fc2
        _fold_bn_before(block.norm2, self.fc1)
        sigma_2 = mlp.sigma.scale.detach().double().flatten()
        weight, bias = _conv_params(self.fc2)
        out_scale, out_shift = (
            _bn_affine(closing_norm) if closing_norm is not None else (torch.ones_like(bias), torch.zeros_like(bias))
        )
        total = layer_scale_2 * out_scale
        _set_conv(self.fc2, weight * (1 + sigma_2).view(1, -1, 1, 1) * total.view(-1, 1, 1, 1),
                  bias * total + out_shift)
        correction = -(weight[:, :, 0, 0] @ sigma_2) * total
        self.register_buffer("decompose_scale", self._channel_vector(correction))
        self.register_buffer(
            "residual_2", self._channel_vector(out_scale) if closing_norm is not None else None
        )

    def _channel_vector(self, values: torch.Tensor) -> torch.Tensor:
        return values.to(self.fc2.weight.dtype).view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.proj_1(x)
        # u + sigma (u - mean(u)) as one pass
        u = torch.addcmul(u.mean((2, 3), keepdim=True) * self.mean_scale, u, self.feature_scale)
        u = F.silu(u)
        gated = F.silu(self.gate(u)).mul_(F.silu(self.value(u)))
        y = torch.addcmul(self.proj_2(gated), x, self.residual_1)
        hidden = F.gelu(self.dwconv(self.fc1(y)))
        out = self.fc2(hidden)
        out = out.add_(y) if self.residual_2 is None else out.addcmul_(y, self.residual_2)
        return out.addcmul_(F.gelu(self.decompose(hidden)), self.decompose_scale)


def _fold_moganet(backbone: MogaNet) -> None:
    """Fold every block; each stage's closing norm goes into its last block (the embeddings' conv-BN pairs are
    folded with every other pair)."""
    for i in range(1, len(backbone.out_channels) + 1):
        blocks: nn.ModuleList = getattr(backbone, f"blocks{i}")
        closing = getattr(backbone, f"norm{i}")
        last = len(blocks) - 1
        for j, block in enumerate(blocks):
            blocks[j] = FoldedMogaBlock(block, closing if j == last else None)
        setattr(backbone, f"norm{i}", nn.Identity())


def _fold_conv_bn_pairs(model: nn.Module) -> None:
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
                _fold_bn_after(module.get_submodule(conv_path), bn)
                module.set_submodule(bn_path, nn.Identity())


def _freeze_standardized_convs(model: nn.Module) -> None:
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


def _uses_timm(model: nn.Module) -> bool:
    return any(type(m).__module__.startswith("timm.") for m in model.modules())


def fold(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm and elementwise tail that :mod:`segzoo.optimize` knows, in place; returns ``model``."""
    for module in list(model.modules()):
        if isinstance(module, MogaNet):
            _fold_moganet(module)
    _fold_conv_bn_pairs(model)
    if _uses_timm(model):
        _freeze_standardized_convs(model)
        for module in model.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = True
    return model
