"""MogaNet backbone (Li et al., "Efficient Multi-order Gated Aggregation Network", ICLR 2024).

Module and parameter names follow the published dense-prediction checkpoints so
that they load without renaming. Every norm is ``BatchNorm2d(eps=1e-5)``: the
segmentation configs pass norm settings the upstream constructor ignores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.features import FeatureExtractor, stage_features
from segzoo.layers import DropPath


@dataclass(frozen=True)
class MogaNetArch:
    """Widths, depths and FFN expansion ratios of the four stages."""

    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    ffn_ratios: tuple[int, int, int, int] = (8, 8, 4, 4)


MOGANET_ARCHS: dict[str, MogaNetArch] = {
    "xt": MogaNetArch((32, 64, 96, 192), (3, 3, 10, 2)),
    "t": MogaNetArch((32, 64, 128, 256), (3, 3, 12, 2)),
    "s": MogaNetArch((64, 128, 320, 512), (2, 3, 12, 2)),
    "b": MogaNetArch((64, 160, 320, 512), (4, 6, 22, 3)),
    "l": MogaNetArch((64, 160, 320, 640), (4, 6, 44, 4)),
}


class ElementScale(nn.Module):
    """Learnable per-channel multiplier."""

    def __init__(self, channels: int, init_value: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((1, channels, 1, 1), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class StemEmbed(nn.Module):
    """Two stride-2 3x3 convs (stride 4 in all) with BN, GELU between them."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.projection = nn.Sequential(
            nn.Conv2d(in_channels, mid, 3, stride=2, padding=1),
            nn.BatchNorm2d(mid),
            nn.GELU(),
            nn.Conv2d(mid, out_channels, 3, stride=2, padding=1),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x)


class DownsampleEmbed(nn.Module):
    """Stride-2 3x3 conv + BN between stages."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.projection = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.projection(x))


class MultiOrderDWConv(nn.Module):
    """Depth-wise 5x5 context, then dilated 5x5 (d=2) and 7x7 (d=3) convs on 3/8 and 4/8 of the channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mid_channels = channels * 3 // 8
        self.high_channels = channels * 4 // 8
        self.low_channels = channels - self.mid_channels - self.high_channels
        self.DW_conv0 = nn.Conv2d(channels, channels, 5, padding=2, groups=channels)
        self.DW_conv1 = nn.Conv2d(
            self.mid_channels, self.mid_channels, 5, padding=4, dilation=2, groups=self.mid_channels
        )
        self.DW_conv2 = nn.Conv2d(
            self.high_channels, self.high_channels, 7, padding=9, dilation=3, groups=self.high_channels
        )
        self.PW_conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.DW_conv0(x)
        low, mid, high = torch.split(x, [self.low_channels, self.mid_channels, self.high_channels], dim=1)
        return self.PW_conv(torch.cat([low, self.DW_conv1(mid), self.DW_conv2(high)], dim=1))


class GatedAggregation(nn.Module):
    """Spatial mixing: SiLU-gated product of a 1x1 gate and a multi-order depth-wise value branch."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj_1 = nn.Conv2d(channels, channels, 1)
        self.gate = nn.Conv2d(channels, channels, 1)
        self.value = MultiOrderDWConv(channels)
        self.proj_2 = nn.Conv2d(channels, channels, 1)
        self.sigma = ElementScale(channels, 1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.proj_1(x)
        # Feature decomposition: amplify what differs from the global average.
        x = F.silu(x + self.sigma(x - F.adaptive_avg_pool2d(x, 1)))
        x = self.proj_2(F.silu(self.gate(x)) * F.silu(self.value(x)))
        return x + shortcut


class ChannelAggregationFFN(nn.Module):
    """1x1 expand, 3x3 depth-wise, GELU, channel aggregation, 1x1 project."""

    def __init__(self, channels: int, hidden_channels: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden_channels, 1)
        self.dwconv = nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1, groups=hidden_channels)
        self.fc2 = nn.Conv2d(hidden_channels, channels, 1)
        self.decompose = nn.Conv2d(hidden_channels, 1, 1)
        self.sigma = ElementScale(hidden_channels, 1e-5)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(F.gelu(self.dwconv(self.fc1(x))))
        x = x + self.sigma(x - F.gelu(self.decompose(x)))
        return self.drop(self.fc2(x))


class MogaBlock(nn.Module):
    """Pre-norm residual block: gated aggregation, then channel-aggregation FFN, each with layer scale."""

    def __init__(self, channels: int, ffn_ratio: float, drop_path: float = 0.0, layer_scale_init: float = 1e-5) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(channels)
        self.attn = GatedAggregation(channels)
        self.norm2 = nn.BatchNorm2d(channels)
        self.mlp = ChannelAggregationFFN(channels, int(channels * ffn_ratio))
        self.layer_scale_1 = nn.Parameter(torch.full((1, channels, 1, 1), layer_scale_init))
        self.layer_scale_2 = nn.Parameter(torch.full((1, channels, 1, 1), layer_scale_init))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale_1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.layer_scale_2 * self.mlp(self.norm2(x)))


class MogaNet(nn.Module):
    """Four-stage MogaNet returning BN-normalized features at strides 4, 8, 16 and 32."""

    def __init__(
        self,
        arch: str = "t",
        in_channels: int = 3,
        drop_path_rate: float = 0.0,
        layer_scale_init: float = 1e-5,
    ) -> None:
        super().__init__()
        if arch not in MOGANET_ARCHS:
            raise ValueError(f"unknown MogaNet arch {arch!r}; choose one of {sorted(MOGANET_ARCHS)}")
        spec = MOGANET_ARCHS[arch]
        self.out_channels: tuple[int, ...] = spec.embed_dims
        total = sum(spec.depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # linear in depth
        prev = in_channels
        for i, (dim, depth, ratio) in enumerate(zip(spec.embed_dims, spec.depths, spec.ffn_ratios), start=1):
            embed = StemEmbed(prev, dim) if i == 1 else DownsampleEmbed(prev, dim)
            blocks = nn.ModuleList(
                MogaBlock(dim, ratio, drop_path=rates.pop(0), layer_scale_init=layer_scale_init) for _ in range(depth)
            )
            self.add_module(f"patch_embed{i}", embed)
            self.add_module(f"blocks{i}", blocks)
            self.add_module(f"norm{i}", nn.BatchNorm2d(dim))
            prev = dim

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i in range(1, len(self.out_channels) + 1):
            x = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"blocks{i}"):
                x = block(x)
            x = getattr(self, f"norm{i}")(x)
            features.append(x)
        return features

    def feature_extractor(self, out_indices: Sequence[int] | None) -> FeatureExtractor:
        """Stages 0-3 (after ``norm1``-``norm4``) at strides 4, 8, 16 and 32; all four by default."""
        modules = tuple(f"norm{i}" for i in range(1, len(self.out_channels) + 1))
        info, picks = stage_features(self, out_indices, modules, (4, 8, 16, 32))
        return FeatureExtractor(self, info, picks)
