"""Training data: the entry's dataset (or a custom folder) through the recipe's pipeline, batched per process."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import itertools

import numpy as np
import torch

from segzoo.datasets.folders import SegmentationFolder, open_dataset
from segzoo.registry import model_info
from segzoo.training.recipe import Recipe


def build_train_dataset(recipe: Recipe, data: str | Path) -> SegmentationFolder:
    """The ``train`` split of the entry's dataset under ``data``. Provisional: custom folders to come."""
    return open_dataset(model_info(recipe.name).dataset, data, "train")


class InfiniteSampler(torch.utils.data.Sampler[tuple[int, int]]):
    """This rank's ``(index, position)`` pairs of an endless stream of seeded permutations.

    Position ``p`` of the stream is sample ``randperm(length, seed + epoch)[p % length]``.
    Optimizer step ``s`` consumes positions ``[s * B, (s + 1) * B)`` with
    ``B = world_size * accumulation * micro_batch``; its micro-step ``a`` on rank
    ``r`` takes ``micro_batch`` positions from ``s * B + (a * world_size + r) * micro_batch``.
    So any split of one total batch over processes and accumulation steps sees
    the same samples, and the stream resumes exactly at ``start_step``.
    """

    def __init__(self, length: int, *, seed: int, rank: int = 0, world_size: int = 1, micro_batch: int = 1,
                 accumulation: int = 1, start_step: int = 0) -> None:
        self.length, self.seed, self.rank, self.world_size = length, seed, rank, world_size
        self.micro_batch, self.accumulation, self.start_step = micro_batch, accumulation, start_step

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.length)
        order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + epoch))
        return int(order[offset])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        total = self.world_size * self.accumulation * self.micro_batch
        for step in itertools.count(self.start_step):
            for micro in range(self.accumulation):
                first = step * total + (micro * self.world_size + self.rank) * self.micro_batch
                for position in range(first, first + self.micro_batch):
                    yield self._index(position), position


def _provisional_transform(sample: dict, recipe: Recipe, index: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crop (padded with 255) and flip, then ImageNet normalization."""
    rng = np.random.default_rng([seed, index])
    image, label = sample["image"], sample["label"]
    ch, cw = recipe.crop_size
    top = int(rng.integers(0, max(image.shape[0] - ch, 0) + 1))
    left = int(rng.integers(0, max(image.shape[1] - cw, 0) + 1))
    image, label = image[top:top + ch, left:left + cw], label[top:top + ch, left:left + cw]
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    info = model_info(recipe.name)
    mean, std = np.array(info.normalization.mean), np.array(info.normalization.std)
    padded_image = np.zeros((ch, cw, 3), np.float32)
    padded_label = np.full((ch, cw), 255, np.int64)
    padded_image[: image.shape[0], : image.shape[1]] = (image - mean) / std
    padded_label[: label.shape[0], : label.shape[1]] = label
    return torch.from_numpy(padded_image).permute(2, 0, 1), torch.from_numpy(padded_label)


class _Transformed(torch.utils.data.Dataset):
    def __init__(self, dataset: SegmentationFolder, recipe: Recipe, seed: int) -> None:
        self.dataset, self.recipe, self.seed = dataset, recipe, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, position = key  # augmentation drawn from the stream position: identical on resume
        return _provisional_transform(self.dataset[index], self.recipe, position, self.seed)


def build_train_loader(
    dataset: SegmentationFolder, recipe: Recipe, *, batch_size: int, rank: int = 0, world_size: int = 1,
    accumulation: int = 1, seed: int = 0, workers: int = 0, start_step: int = 0,
) -> torch.utils.data.DataLoader:
    """Endless micro-batches of ``(images, labels)`` for this rank (see :class:`InfiniteSampler`)."""
    sampler = InfiniteSampler(len(dataset), seed=seed, rank=rank, world_size=world_size, micro_batch=batch_size,
                              accumulation=accumulation, start_step=start_step)
    return torch.utils.data.DataLoader(_Transformed(dataset, recipe, seed), batch_size=batch_size,
                                       sampler=sampler, num_workers=workers, drop_last=True)
