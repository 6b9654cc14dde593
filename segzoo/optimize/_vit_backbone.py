"""The fast segzoo ViT, apart from :mod:`segzoo.optimize.vit` because it subclasses a class whose module imports
timm: the rewrite table's discovery skips this module, and :func:`segzoo.optimize.vit.rewrite_vit` imports it
once a model holds a ViT."""

from __future__ import annotations

import torch

from segzoo.backbones.vit import ViT
from segzoo.optimize import EvalOnly


class FastViT(EvalOnly, ViT):
    """A :class:`~segzoo.backbones.vit.ViT` remembering its position embedding resized to the last token grid
    (the weights are frozen)."""

    resized_pos_embed: tuple = (None, None)

    def _add_pos_embed(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if tokens.shape[1] == self.pos_embed.shape[1]:
            return tokens + self.pos_embed
        key = (grid, tokens.shape[1], self.pos_embed.device, self.pos_embed.dtype)
        if self.resized_pos_embed[0] != key:  # zeros plus the resized embedding: the resized embedding, exactly
            zeros = self.pos_embed.new_zeros(1, tokens.shape[1], self.pos_embed.shape[2])
            self.resized_pos_embed = (key, super()._add_pos_embed(zeros, grid))
        return tokens + self.resized_pos_embed[1]
