"""Dilated ResNet with the deep stem (ResNet-D style, 128 stem channels), as EMANet's detectron2 port builds it.

The later stages trade stride for dilation so that the last stage keeps 1/8 or
1/16 of the input resolution. Module names follow the upstream code
(``conv1.0``, ``bn1``, ``layer1.0.downsample.0``, ...) so that its checkpoints
load without renaming.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segzoo.features import FeatureExtractor, stage_features

DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
STEM_CHANNELS = 128
MULTI_GRID = (1, 2, 4)
# output stride -> (stride, dilation) of layer3 and layer4; layer4 multiplies its rate by MULTI_GRID
_STAGE_SETTINGS = {8: ((1, 2), (1, 4)), 16: ((2, 1), (1, 2))}


def msra_fill(conv: nn.Conv2d) -> None:
    """detectron2's ``c2_msra_fill``: He normal weights (fan-out, ReLU gain), zero bias."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _ramped(rate: int, num_blocks: int) -> list[int]:
    """Dilations of a dilated stage: the first block at half the rate (rate 2: undilated), as upstream."""
    return [max(1, rate // 2)] + [rate] * (num_blocks - 1)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, dilated), 1x1 expand, each with BatchNorm; ReLU after the residual sum."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, momentum=bn_momentum)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels, momentum=bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class DilatedResNet(nn.Module):
    """Bottleneck ResNet-50/101/152 with a three-conv stem and an output stride of 8 or 16.

    Returns the outputs of the stages listed in ``out_indices`` (0 = layer1 at
    stride 4, ..., 3 = layer4 at the output stride, 2048 channels). Every
    BatchNorm has eps 1e-5 and momentum ``bn_momentum`` (EMANet: ``EMA.BN_MOM``).
    With ``multi_grid`` layer4's blocks dilate by (1, 2, 4) times its rate
    (EMANet); without it like layer3: half the rate, then the full rate.
    """

    def __init__(
        self,
        depth: int = 50,
        output_stride: int = 8,
        bn_momentum: float = 0.1,
        multi_grid: bool = True,
        out_indices: Sequence[int] = (0, 1, 2, 3),
    ) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {sorted(DEPTHS)}, got {depth}")
        if output_stride not in _STAGE_SETTINGS:
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        self.out_indices = tuple(out_indices)
        self.bn_momentum = bn_momentum
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(64, momentum=bn_momentum),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64, momentum=bn_momentum),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, STEM_CHANNELS, 3, padding=1, bias=False),
        )
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS, momentum=bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        (stride3, dilation3), (stride4, dilation4) = _STAGE_SETTINGS[output_stride]
        blocks = DEPTHS[depth]
        self._in_channels = STEM_CHANNELS
        self.layer1 = self._make_layer(64, blocks[0], stride=1, dilations=[1] * blocks[0])
        self.layer2 = self._make_layer(128, blocks[1], stride=2, dilations=[1] * blocks[1])
        self.layer3 = self._make_layer(256, blocks[2], stride=stride3, dilations=_ramped(dilation3, blocks[2]))
        dilations4 = [g * dilation4 for g in MULTI_GRID] if multi_grid else _ramped(dilation4, blocks[3])
        self.layer4 = self._make_layer(512, blocks[3], stride=stride4, dilations=dilations4)
        self.out_channels = [64 * 4, 128 * 4, 256 * 4, 512 * 4]
        self.output_stride = output_stride
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                msra_fill(module)

    def _make_layer(self, planes: int, num_blocks: int, stride: int, dilations: Sequence[int]) -> nn.Sequential:
        if len(dilations) != num_blocks:
            raise ValueError(f"{num_blocks} blocks need {num_blocks} dilations, got {list(dilations)}")
        out_channels = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self._in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(self._in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels, momentum=self.bn_momentum),
            )
        layers = [Bottleneck(self._in_channels, planes, stride, dilations[0], downsample, self.bn_momentum)]
        self._in_channels = out_channels
        layers += [Bottleneck(out_channels, planes, 1, d, bn_momentum=self.bn_momentum) for d in dilations[1:]]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outputs = []
        for index, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4)):
            x = layer(x)
            if index in self.out_indices:
                outputs.append(x)
        return outputs

    def feature_extractor(self, out_indices: Sequence[int] | None) -> FeatureExtractor:
        """``layer1``-``layer4`` (stages 0-3), all four by default; only the stages asked for are computed."""
        reductions = (4, 8, min(16, self.output_stride), self.output_stride)
        modules = ("layer1", "layer2", "layer3", "layer4")
        info, picks = stage_features(self, out_indices, modules, reductions)
        self.out_indices = picks
        return FeatureExtractor(self, info, range(len(picks)))
