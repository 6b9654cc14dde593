"""How one optimizer step's images split over processes, accumulation steps and per-process micro-batches."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from segzoo.training.config import TrainConfig
from segzoo.training.recipe import Recipe

log = logging.getLogger("segzoo.training")


@dataclass(frozen=True)
class BatchSplit:
    """How one optimizer step's images are split: ``world_size`` x ``accumulation`` x ``batch_size``."""

    world_size: int
    batch_size: int
    accumulation: int

    @property
    def total(self) -> int:
        return self.world_size * self.accumulation * self.batch_size

    def positions(self, step: int, micro: int, rank: int) -> range:
        """The data-stream positions of the micro-batch that process ``rank`` trains on at accumulation micro-step
        ``micro`` of optimizer step ``step`` (0-based): step ``s`` takes positions ``[s * total, (s + 1) * total)``."""
        first = step * self.total + (micro * self.world_size + rank) * self.batch_size
        return range(first, first + self.batch_size)


def split_batch(recipe: Recipe, config: TrainConfig, world_size: int) -> BatchSplit:
    """The per-process batch and accumulation that reproduce ``recipe.batch_size`` on ``world_size`` processes.

    Without ``--batch-size``: the paper's images per GPU. An explicit
    ``--accumulation`` wins, with a warning when the total batch then differs.
    """
    batch = config.batch_size or recipe.images_per_gpu
    if config.accumulation is not None:
        split = BatchSplit(world_size, batch, config.accumulation)
        if split.total != recipe.batch_size:
            log.warning(
                "total batch %d (%d processes x %d steps x %d images) differs from the recipe's %d",
                split.total,
                world_size,
                config.accumulation,
                batch,
                recipe.batch_size,
            )
        return split
    per_step = world_size * batch
    if recipe.batch_size % per_step:
        raise ValueError(
            f"{recipe.name} trains with {recipe.batch_size} images per step, which {world_size} processes x "
            f"{batch} images cannot split evenly; choose --batch-size so that processes x batch divides "
            f"{recipe.batch_size}, or set --accumulation (changes the total batch)"
        )
    return BatchSplit(world_size, batch, recipe.batch_size // per_step)
