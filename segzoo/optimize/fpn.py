"""The Semantic-FPN head with its levels' last upsampling shared: the same function, fewer full-size passes."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.heads import FPNHead
from segzoo.heads.fpn import Upsample2x


class FPNHeadForInference(FPNHead):
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


def share_fpn_upsampling(model: nn.Module) -> None:
    """Give every :class:`~segzoo.heads.FPNHead` in ``model`` the shared-upsampling ``features``, in place."""
    for module in model.modules():
        if type(module) is FPNHead:
            module.__class__ = FPNHeadForInference
