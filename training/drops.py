"""Dropout and drop-path whose masks depend only on the seed and each sample's position in the data stream.

torch's and timm's modules draw from each process's global generator, so a second process draws other masks than a
second accumulation micro-step of one process would. Before DDP wraps the model, the run replaces them with
:class:`SeededDrop`, which draws sample ``i``'s mask from a generator seeded by ``(seed, stream position of sample i,
the module's index in the model, the call's index in this forward)``. Like the augmentation, the masks are then the
same for any split of the total batch over processes and accumulation steps, and in a resumed run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import timm.layers
import torch
from torch import nn

import segzoo.layers

MaskUnit = Literal["element", "channel", "sample"]
"""What one draw keeps or drops: one value (``nn.Dropout``), one channel (``nn.Dropout2d``), one whole sample
(drop-path)."""


class DrawKeys:
    """What :class:`SeededDrop` modules key their draws by: the run's seed and the stream positions of the samples
    of the forward in progress (the loop sets them before each training forward)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.positions: tuple[int, ...] = ()
        self._calls: dict[int, int] = {}

    def start(self, positions: Sequence[int]) -> None:
        """Key the next forward's draws by ``positions``, the stream positions of its samples in batch order."""
        self.positions = tuple(positions)
        self._calls.clear()

    def generators(self, module_index: int, batch: int, device: torch.device) -> list[torch.Generator]:
        """One generator per sample for this call of module ``module_index`` (a module may run twice per forward,
        as MogaNet's drop-path does: each call draws anew)."""
        if batch != len(self.positions):
            raise RuntimeError(
                f"a training forward of {batch} samples, but {len(self.positions)} stream positions are set: call "
                f"DrawKeys.start with the batch's positions before each training forward"
            )
        call = self._calls[module_index] = self._calls.get(module_index, -1) + 1
        return [
            torch.Generator(device).manual_seed(_seed(self.seed, position, module_index, call))
            for position in self.positions
        ]


def _seed(*key: int) -> int:
    return int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0])


class SeededDrop(nn.Module):
    """Dropout with probability ``p`` per ``unit``, each sample's mask drawn from ``keys``; kept values are scaled by
    ``1 / (1 - p)`` when ``scale``. The identity in eval mode. No parameters or buffers: state dicts are unchanged."""

    def __init__(self, p: float, unit: MaskUnit, keys: DrawKeys, index: int, scale: bool = True) -> None:
        super().__init__()
        self.p, self.unit, self.keys, self.index, self.scale = p, unit, keys, index, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        if self.unit == "element":
            shape = tuple(x.shape[1:])
        elif self.unit == "channel":
            shape = (x.shape[1],) + (1,) * (x.ndim - 2)
        else:
            shape = (1,) * (x.ndim - 1)
        mask = x.new_empty((x.shape[0], *shape))
        for row, generator in zip(mask, self.keys.generators(self.index, x.shape[0], x.device)):
            row.bernoulli_(keep, generator=generator)
        if keep > 0.0 and self.scale:
            mask.div_(keep)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}, unit={self.unit}, index={self.index}"


def _drop_spec(module: nn.Module) -> tuple[float, MaskUnit, bool] | None:
    """``(p, unit, scale)`` of a dropout or drop-path module that :class:`SeededDrop` replaces, else ``None``."""
    if type(module) is nn.Dropout:
        return module.p, "element", True
    if type(module) in (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d):
        return module.p, "channel", True
    if isinstance(module, segzoo.layers.DropPath):
        return module.p, "sample", True
    if isinstance(module, timm.layers.DropPath):
        return module.drop_prob, "sample", module.scale_by_keep
    return None


def seed_drops(model: nn.Module, seed: int) -> DrawKeys:
    """Replace, in place, every dropout and drop-path module of ``model`` that drops anything (p > 0) by a
    :class:`SeededDrop` and return the keys they draw from.

    Attention that would drop inside its fused kernel (timm's ``fused_attn`` with ``attn_drop.p > 0``, drawing from
    the global generator) runs unfused instead, so that its ``attn_drop`` module draws.
    """
    keys = DrawKeys(seed)
    replacements: dict[int, SeededDrop] = {}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            spec = _drop_spec(child)
            if spec is None or spec[0] == 0.0:
                continue
            if id(child) not in replacements:  # a module shared by several parents stays shared
                p, unit, scale = spec
                replacements[id(child)] = SeededDrop(p, unit, keys, len(replacements), scale).train(child.training)
            setattr(parent, name, replacements[id(child)])
    for module in model.modules():
        if getattr(module, "fused_attn", False) and isinstance(getattr(module, "attn_drop", None), SeededDrop):
            module.fused_attn = False
    return keys
