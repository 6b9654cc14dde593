"""MogaNet's fast path: its blocks with their norms, layer scales and element scales folded into the 1x1
convolutions, and its embeddings' conv-BN pairs.

On the CPU in float32 the FFN's depth-wise conv and the GELU after it run as one oneDNN op (GELU applied as
the conv writes its output, instead of a second pass over the wide hidden map), reached through the internal
``torch.ops.mkldnn._convolution_pointwise``: used only when a probe at optimize time finds it and finds it equal
to ``F.conv2d`` and ``F.gelu``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from segzoo.backbones.moganet import DownsampleEmbed, MogaBlock, MogaNet
from segzoo.optimize import EvalOnly, PrefersChannelsLast, Rewrite
from segzoo.optimize.folding import bn_affine, conv_bn_rewrite, conv_params, fold_bn_before, scale_outputs, set_conv

MAX_HIDDEN_BYTES = 1 << 24
"""The largest wide FFN hidden map :class:`FastMogaBlock` computes at once. Larger ones (stage 1 of MogaNet-S,
-B and -L: 512 channels at a quarter of the input size, 32 MiB at 512x512) are computed in channel slices:
a map past the C library allocator's 32 MiB ceiling gets fresh pages from the system on every allocation,
whose page faults cost as much as the GELU on it; slices below it reuse freed memory."""


@functools.cache
def onednn_conv_gelu_available() -> bool:
    """Whether oneDNN's fused convolution op exists here and computes what a depth-wise conv and GELU do."""
    try:
        op = torch.ops.mkldnn._convolution_pointwise
        g = torch.Generator().manual_seed(0)
        weight, bias = torch.randn(8, 1, 3, 3, generator=g), torch.randn(8, generator=g)
        nchw = torch.randn(1, 8, 6, 7, generator=g)
        with torch.no_grad():
            for x in (nchw, nchw.contiguous(memory_format=torch.channels_last)):
                out = op(x, weight, bias, [1, 1], [1, 1], [1, 1], 8, "gelu", [], "none")
                reference = F.gelu(F.conv2d(x, weight, bias, padding=1, groups=8))
                if out.shape != reference.shape or not torch.allclose(out, reference, rtol=1e-5, atol=1e-5):
                    return False
        return True
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _even_slices(total: int, pieces: int) -> list[tuple[int, int]]:
    bounds = [total * i // pieces for i in range(pieces + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


class FastMogaBlock(EvalOnly, nn.Module):
    """A :class:`~segzoo.backbones.moganet.MogaBlock` with its norms, layer scales and element scales folded,
    optionally followed by the stage's closing BatchNorm (folded too).

    With ``n1 = a1 x + b1`` (``norm1``), the gated aggregation's shortcut and layer scale give
    ``y = (1 + ls1 a1) x + ls1 (proj_2(...) + b1)``; the FFN's ``fc2((1 + s) h - s gelu(d))`` is
    ``fc2'(h) - (W2 s) gelu(d)``, a one-channel map times a vector on the narrow output.

    ``fuse_gelu``: run the FFN's depth-wise conv and its GELU as one oneDNN op (CPU, float32, not under
    ``torch.compile``; otherwise ``F.conv2d`` and ``F.gelu``).
    """

    fuse_gelu: bool = False

    def __init__(self, block: MogaBlock, closing_norm: _BatchNorm | None = None) -> None:
        super().__init__()
        attn, mlp = block.attn, block.mlp
        value = attn.value
        self.proj_1, self.gate, self.proj_2 = attn.proj_1, attn.gate, attn.proj_2
        self.context, self.mid_conv, self.high_conv, self.value_mix = (
            value.DW_conv0,
            value.DW_conv1,
            value.DW_conv2,
            value.PW_conv,
        )
        self.split_sizes = [value.low_channels, value.mid_channels, value.high_channels]
        self.high_padding = _move_excess_padding(self.high_conv)
        self.fc1, self.dwconv = mlp.fc1, mlp.dwconv
        self.fuse_gelu = onednn_conv_gelu_available()
        layer_scale_1 = block.layer_scale_1.detach().double().flatten()
        layer_scale_2 = block.layer_scale_2.detach().double().flatten()
        # gated aggregation: norm1 into proj_1; the shortcut (the normed input) and layer scale 1 into proj_2
        scale_1, shift_1 = bn_affine(block.norm1)
        fold_bn_before(block.norm1, self.proj_1)
        scale_outputs(self.proj_2, layer_scale_1, layer_scale_1 * shift_1)
        self.register_buffer("residual_1", self._channel_vector(1 + layer_scale_1 * scale_1))
        sigma_1 = attn.sigma.scale.detach().double().flatten()
        self.register_buffer("feature_scale", self._channel_vector(1 + sigma_1))
        self.register_buffer("mean_scale", self._channel_vector(-sigma_1))
        # FFN: norm2 into fc1; the channel aggregation, layer scale 2 and the closing norm into fc2, and fc2 and
        # decompose (both read the wide hidden map) as one conv whose last output channel is decompose's
        fold_bn_before(block.norm2, self.fc1)
        sigma_2 = mlp.sigma.scale.detach().double().flatten()
        weight, bias = conv_params(mlp.fc2)
        out_scale, out_shift = (
            bn_affine(closing_norm) if closing_norm is not None else (torch.ones_like(bias), torch.zeros_like(bias))
        )
        total = layer_scale_2 * out_scale
        decompose_weight, decompose_bias = conv_params(mlp.decompose)
        self.channels = weight.shape[0]
        self.fc2_decompose = nn.Conv2d(
            weight.shape[1], self.channels + 1, 1, device=mlp.fc2.weight.device, dtype=mlp.fc2.weight.dtype
        )
        set_conv(
            self.fc2_decompose,
            torch.cat([weight * (1 + sigma_2).view(1, -1, 1, 1) * total.view(-1, 1, 1, 1), decompose_weight]),
            torch.cat([bias * total + out_shift, decompose_bias]),
        )
        correction = -(weight[:, :, 0, 0] @ sigma_2) * total
        self.register_buffer("decompose_scale", self._channel_vector(correction))
        self.register_buffer("residual_2", self._channel_vector(out_scale) if closing_norm is not None else None)

    def _channel_vector(self, values: torch.Tensor) -> torch.Tensor:
        return values.to(self.proj_1.weight.dtype).view(1, -1, 1, 1)

    def _value(self, u: torch.Tensor) -> torch.Tensor:
        """The multi-order depth-wise branch before its SiLU."""
        low, mid, high = torch.split(self.context(u), self.split_sizes, dim=1)
        high = self.high_conv(F.pad(high, self.high_padding))
        return self.value_mix(torch.cat([low, self.mid_conv(mid), high], dim=1))

    def _dwconv_gelu(self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``gelu(dwconv(hidden))`` with ``dwconv``'s parameters, or the slice of them given."""
        conv, groups = self.dwconv, weight.shape[0]
        if (
            self.fuse_gelu
            and hidden.device.type == "cpu"
            and hidden.dtype == torch.float32
            and not torch.compiler.is_compiling()
        ):
            return torch.ops.mkldnn._convolution_pointwise(
                hidden,
                weight,
                bias,
                list(conv.padding),
                list(conv.stride),
                list(conv.dilation),
                groups,
                "gelu",
                [],
                "none",
            )
        return F.gelu(F.conv2d(hidden, weight, bias, conv.stride, conv.padding, conv.dilation, groups))

    def _ffn(self, y: torch.Tensor) -> torch.Tensor:
        """``fc2_decompose(gelu(dwconv(fc1(y))))``, over slices of the hidden channels when the wide hidden map
        would exceed ``MAX_HIDDEN_BYTES`` (the slices' products summed: the same sums, reassociated)."""
        hidden_channels = self.fc1.out_channels
        hidden_bytes = y[:, :1].numel() * hidden_channels * y.element_size()
        pieces = min(-(-hidden_bytes // MAX_HIDDEN_BYTES), hidden_channels)
        if pieces == 1:
            return self.fc2_decompose(self._dwconv_gelu(self.fc1(y), self.dwconv.weight, self.dwconv.bias))
        out = None
        for start, end in _even_slices(hidden_channels, pieces):
            hidden = F.conv2d(y, self.fc1.weight[start:end], self.fc1.bias[start:end])
            dw_bias = self.dwconv.bias[start:end] if self.dwconv.bias is not None else None
            hidden = self._dwconv_gelu(hidden, self.dwconv.weight[start:end], dw_bias)
            bias = self.fc2_decompose.bias if out is None else None
            part = F.conv2d(hidden, self.fc2_decompose.weight[:, start:end], bias)
            out = part if out is None else out.add_(part)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.proj_1(x)
        # u + sigma (u - mean(u)) as one pass
        u = F.silu(torch.addcmul(u.mean((2, 3), keepdim=True) * self.mean_scale, u, self.feature_scale), inplace=True)
        gated = F.silu(self.gate(u), inplace=True).mul_(F.silu(self._value(u), inplace=True))
        y = torch.addcmul(self.proj_2(gated), x, self.residual_1)
        out, decomposed = torch.split(self._ffn(y), [self.channels, 1], dim=1)
        out = torch.add(out, y) if self.residual_2 is None else torch.addcmul(out, y, self.residual_2)
        return out.addcmul_(F.gelu(decomposed), self.decompose_scale)


def _move_excess_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """Leave ``conv`` at most ``kernel_size - 1`` zero padding per side and return the rest, for ``F.pad`` before it.

    oneDNN's depth-wise kernels refuse a padding as wide as the kernel (MogaNet's 7x7 conv with dilation 3 pads
    9) and fall back to a path about ten times slower; the same zeros padded beforehand cost one copy, which
    the channel slice the conv reads needs anyway.
    """
    kept = [min(p, k - 1) for p, k in zip(conv.padding, conv.kernel_size)]
    excess_h, excess_w = (p - k for p, k in zip(conv.padding, kept))
    conv.padding = tuple(kept)
    return (excess_w, excess_w, excess_h, excess_h)


def rewrite_moganet(backbone: MogaNet) -> MogaNet:
    """Rewrite every block as a :class:`FastMogaBlock`, in place; each stage's closing norm goes into its last
    block. A stage already rewritten is left as it is."""
    for i in range(1, len(backbone.out_channels) + 1):
        blocks: nn.ModuleList = getattr(backbone, f"blocks{i}")
        closing = getattr(backbone, f"norm{i}")
        if not isinstance(blocks[-1], MogaBlock):
            continue
        last = len(blocks) - 1
        for j, block in enumerate(blocks):
            blocks[j] = FastMogaBlock(block, closing if j == last else None)
        setattr(backbone, f"norm{i}", nn.Identity())
    return backbone


REWRITES = (
    conv_bn_rewrite(DownsampleEmbed, ("projection", "norm")),
    Rewrite("MogaNet blocks", "fold tails", (MogaNet,), rewrite_moganet),
)
# Its depth-wise convolutions run faster channels-last on the CPU only (oneDNN); on a GPU, slower.
CHANNELS_LAST = (PrefersChannelsLast((MogaNet,), ("cpu",)),)
