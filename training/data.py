"""Training data: the entry's dataset (or a custom folder) through the recipe's pipeline, batched per process."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from segzoo.datasets.folders import SegmentationFolder, open_dataset
from segzoo.registry import model_info
from segzoo.training.recipe import Recipe


def build_train_dataset(recipe: Recipe, data: str | Path) -> SegmentationFolder:
    """The ``train`` split of the entry's dataset under ``data``. Provisional: custom folders to come."""
    return open_dataset(model_info(recipe.name).dataset, data, "train")


class InfiniteSampler(torch.utils.data.Sampler[int]):
    """Provisional: this rank's share of endless seeded permutations, starting after ``start`` samples."""

    def __init__(self, length: int, rank: int, world_size: int, seed: int, start: int = 0) -> None:
        self.length, self.rank, self.world_size, self.seed, self.start = length, rank, world_size, seed, start

    def __iter__(self) -> Iterator[int]:
        position = 0
        for epoch in range(2**62):
            order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
            for index in order[self.rank::self.world_size]:
                if position >= self.start:
                    yield index
                position += 1


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

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _provisional_transform(self.dataset[index], self.recipe, index, self.seed)


def build_train_loader(
    dataset: SegmentationFolder, recipe: Recipe, *, batch_size: int, rank: int = 0, world_size: int = 1,
    seed: int = 0, workers: int = 0, start: int = 0,
) -> torch.utils.data.DataLoader:
    """Endless batches of ``(images, labels)`` for this rank; ``start`` samples of it already consumed."""
    sampler = InfiniteSampler(len(dataset), rank, world_size, seed, start)
    return torch.utils.data.DataLoader(_Transformed(dataset, recipe, seed), batch_size=batch_size,
                                       sampler=sampler, num_workers=workers, drop_last=True)
