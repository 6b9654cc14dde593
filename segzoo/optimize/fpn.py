"""Semantic FPN's neck and head rewritten for inference: the same function, less work at the finest level.

- Neck: a level's output conv ``A`` reads ``L x + up(t)``, its 1x1 lateral ``L`` of its input ``x`` plus the
  nearest 2x upsampling of the coarser level's sum ``t``. ``A`` is linear, so it splits into ``A L`` (one 3x3 conv
  on the narrow input) plus ``A up`` on ``t``, and a 3x3 conv of a nearest 2x upsampling is a stride-2 transposed
  4x4 conv at the coarse level: 2x2 coarse taps per fine pixel instead of 9. Exact where the fine size is twice
  the coarse size; elsewhere the neck runs as before.
- Head: the coarse levels share their last bilinear 2x upsampling (see :class:`FastFPNHead`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.heads import FPNHead, FPNNeck
from segzoo.heads.fpn import Upsample2x
from segzoo.optimize import EvalOnly, PrefersChannelsLast, Rewrite
from segzoo.optimize.folding import conv_params


class FastFPNNeck(EvalOnly, FPNNeck):
    """An :class:`~segzoo.heads.FPNNeck` whose outputs below the top level are computed from the narrow input
    and the coarser level's sum (see the module docstring)."""

    @classmethod
    def from_module(cls, neck: FPNNeck) -> FastFPNNeck:
        fast = super().from_module(neck)
        fast._precompute_level_convs()
        return fast

    def _precompute_level_convs(self) -> None:
        """Precompute each level's ``A L`` and transposed conv from its weights (in float64)."""
        for i, (lateral, output) in enumerate(zip(self.lateral_convs[:-1], self.fpn_convs[:-1])):
            weight, bias = conv_params(output.conv)
            lateral_weight, lateral_bias = conv_params(lateral.conv)
            through_lateral = torch.einsum("omyx,mc->ocyx", weight, lateral_weight[:, :, 0, 0])
            self.register_buffer(f"through_lateral{i}", through_lateral.to(output.conv.weight))
            self.register_buffer(f"upsampled{i}", _upsampled_conv_weight(weight).to(output.conv.weight))
            self.register_buffer(f"output_bias{i}", bias.to(output.conv.weight))
            self.register_buffer(f"lateral_bias{i}", lateral_bias.view(1, -1, 1, 1).to(output.conv.weight))

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        top = len(inputs) - 1
        sums = [self.lateral_convs[top](inputs[top])]  # the top-down sums, coarsest first
        for i in range(top - 1, 0, -1):
            sums.insert(
                0,
                self.lateral_convs[i](inputs[i]).add_(F.interpolate(sums[0], size=inputs[i].shape[2:], mode="nearest")),
            )
        outputs = [self._level_output(i, inputs[i], sums[i]) for i in range(top)]
        return outputs + [self.fpn_convs[top](sums[-1])]

    def _level_output(self, i: int, x: torch.Tensor, coarser: torch.Tensor) -> torch.Tensor:
        """Output ``i`` from input ``i`` and the top-down sum of level ``i + 1``."""
        if x.shape[2:] != tuple(2 * s for s in coarser.shape[2:]):  # nearest resizing is no 2x repetition
            level_sum = self.lateral_convs[i](x) + F.interpolate(coarser, size=x.shape[2:], mode="nearest")
            return self.fpn_convs[i](level_sum)
        out = F.conv_transpose2d(
            coarser + getattr(self, f"lateral_bias{i}"),
            getattr(self, f"upsampled{i}"),
            getattr(self, f"output_bias{i}"),
            stride=2,
            padding=1,
        )
        return out.add_(F.conv2d(x, getattr(self, f"through_lateral{i}"), padding=1))


def _upsampled_conv_weight(weight: torch.Tensor) -> torch.Tensor:
    """The stride-2, padding-1 transposed-conv weight ``(in, out, 4, 4)`` equal to the 3x3 conv ``weight`` (zero
    padding 1) after a nearest 2x upsampling: along each axis, fine pixel ``2i`` sees coarse ``i - 1`` through
    tap 0 and coarse ``i`` through taps 1 + 2; fine pixel ``2i + 1`` sees coarse ``i`` through taps 0 + 1 and
    ``i + 1`` through tap 2. Transposed-conv tap ``t`` holds, in that order, taps 2, 1 + 2, 0 + 1 and 0."""

    def collapse(w: torch.Tensor, dim: int) -> torch.Tensor:
        w0, w1, w2 = w.unbind(dim)
        return torch.stack([w2, w1 + w2, w0 + w1, w0], dim)

    return collapse(collapse(weight, 2), 3).transpose(0, 1)


class FastFPNHead(EvalOnly, FPNHead):
    """An :class:`~segzoo.heads.FPNHead` whose coarse levels share their last 2x upsampling.

    Every level but the finest ends in a bilinear 2x upsampling to (about) the finest level's size, after which
    the head resizes it to exactly that size and sums. Resizing is linear, so the maps that reach their last
    upsampling at the same size are summed first and upsampled once; a resize to the size a map already has is
    the identity and is skipped.
    """

    def features(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        out = self.scale_heads[0](inputs[0])
        pending: dict[torch.Size, tuple[nn.Module, torch.Tensor]] = {}  # size before the last upsampling
        for head, x in zip(self.scale_heads[1:], inputs[1:]):
            *body, last = head
            if not isinstance(last, Upsample2x):
                self._add_resized(out, head(x))
                continue
            for layer in body:
                x = layer(x)
            if x.shape[2:] in pending:
                pending[x.shape[2:]][1].add_(x)
            else:
                pending[x.shape[2:]] = (last, x)
        for upsample, level_sum in pending.values():
            self._add_resized(out, upsample(level_sum))
        return out

    def _add_resized(self, out: torch.Tensor, level: torch.Tensor) -> None:
        if level.shape[2:] != out.shape[2:]:
            level = F.interpolate(level, size=out.shape[2:], mode="bilinear", align_corners=self.align_corners)
        out.add_(level)


REWRITES = (
    Rewrite("Semantic-FPN neck", "rewrite blocks", (FPNNeck,), FastFPNNeck.from_module),
    Rewrite("Semantic-FPN head", "rewrite blocks", (FPNHead,), FastFPNHead.from_module),
)
# On the CPU both run faster channels-last, beside MogaNet's channels-last features.
CHANNELS_LAST = (PrefersChannelsLast((FPNNeck, FPNHead), ("cpu",)),)
