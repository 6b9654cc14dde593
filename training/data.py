"""Training data: the entry's dataset (or a custom folder) through the recipe's pipeline, batched per process."""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from segzoo.datasets.check import check_custom_data
from segzoo.datasets.folders import IGNORE_INDEX, CustomFolder, DatasetError, SegmentationFolder, open_data
from segzoo.registry import model_info
from segzoo.training.batch import BatchSplit
from segzoo.training.distributed import Processes, barrier
from segzoo.training.recipe import Recipe
from segzoo.training.transforms import TrainTransform


def build_train_dataset(recipe: Recipe, data: str | Path, *, num_classes: int | None = None) -> SegmentationFolder:
    """The ``train`` split of the entry's dataset under the folder ``data``, or of the user's dataset
    ``custom:DIR`` (see :func:`segzoo.datasets.folders.open_custom_dataset`; needs ``num_classes``).

    Images are read as the entry's upstream reader read them (EXIF orientation, see
    :func:`segzoo.inference.load_image`).
    """
    info = model_info(recipe.name)
    return open_data(info.dataset, data, "train", num_classes, info.test_pipeline)


def check_training_data(
    datasets: Sequence[SegmentationFolder | None], processes: Processes, *, workers: int, quiet: bool = False
) -> None:
    """Read every file of the custom splits among ``datasets`` before anything is built, on ``workers`` threads
    (see :func:`segzoo.datasets.check.check_custom_data`). The main process reads them; the others wait and then
    find them in the check's cache."""
    folders = [dataset for dataset in datasets if isinstance(dataset, CustomFolder)]
    if not folders:
        return
    if processes.is_main:
        check_custom_data(folders, workers, progress=False if quiet else None)
    barrier(processes)
    if not processes.is_main:
        check_custom_data(folders, workers, progress=False)


class InfiniteSampler(torch.utils.data.Sampler[tuple[int, int]]):
    """This rank's ``(index, position)`` pairs of an endless stream of seeded permutations.

    Position ``p`` of the stream is sample ``randperm(length, seed + epoch)[p % length]``.
    Optimizer step ``s`` consumes positions ``[s * B, (s + 1) * B)`` with
    ``B = world_size * accumulation * micro_batch``; its micro-step ``a`` on rank
    ``r`` takes ``micro_batch`` positions from ``s * B + (a * world_size + r) * micro_batch``.
    So any split of one total batch over processes and accumulation steps sees
    the same samples, and the stream resumes exactly at ``start_step``.
    """

    def __init__(
        self,
        length: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        micro_batch: int = 1,
        accumulation: int = 1,
        start_step: int = 0,
    ) -> None:
        if length < 1:
            raise DatasetError("the training dataset has no samples")
        self.length, self.seed, self.rank, self.world_size = length, seed, rank, world_size
        self.micro_batch, self.accumulation, self.start_step = micro_batch, accumulation, start_step
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.int64)

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.length)
        if epoch != self._epoch:  # positions advance in order: one permutation per epoch
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.length, generator=generator)
        return int(self._order[offset])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        split = BatchSplit(self.world_size, self.micro_batch, self.accumulation)
        for step in itertools.count(self.start_step):
            for micro in range(self.accumulation):
                for position in split.positions(step, micro, self.rank):
                    yield self._index(position), position


class TrainSamples(torch.utils.data.Dataset):
    """``dataset`` through ``recipe``'s pipeline, keyed by the sampler's ``(index, position)``.

    Sample ``index`` at stream ``position`` is augmented with ``default_rng([seed, position])``
    only, so a position looks the same on any rank, worker count or resumed run.
    """

    def __init__(self, dataset: SegmentationFolder, recipe: Recipe, seed: int) -> None:
        self.dataset, self.transform, self.seed = dataset, TrainTransform(recipe), seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, position = key
        sample = self.dataset[index]
        return self.transform(sample["image"], sample["label"], np.random.default_rng([self.seed, position]))


def collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images float32 (N, 3, H, W), labels int64 (N, H, W))``, padded at the bottom and right to the
    largest sample with 0 and the ignore index (detectron2's ``ImageList.from_tensors``; a no-op for
    mmseg crops, which all come at the crop size). detectron2 also grouped same-orientation images into
    batches (``ASPECT_RATIO_GROUPING``); the position contract of :class:`InfiniteSampler` leaves that out."""
    height = max(image.shape[-2] for image, _ in batch)
    width = max(image.shape[-1] for image, _ in batch)
    images = torch.zeros(len(batch), 3, height, width, dtype=torch.float32)
    labels = torch.full((len(batch), height, width), IGNORE_INDEX, dtype=torch.int64)
    for i, (image, label) in enumerate(batch):
        images[i, :, : image.shape[-2], : image.shape[-1]] = image
        labels[i, : label.shape[-2], : label.shape[-1]] = label
    return images, labels


def seed_worker(worker_id: int, *, seed: int, rank: int) -> None:
    """Seed numpy, ``random`` and torch in a loader worker from (seed, rank, worker id), for anything
    not seeded by stream position (the augmentations are)."""
    state = np.random.SeedSequence([seed, rank, worker_id]).generate_state(2)
    np.random.seed(int(state[0]))
    random.seed(int(state[1]))
    torch.manual_seed(int(state[0]) << 32 | int(state[1]))


def build_train_loader(
    dataset: SegmentationFolder,
    recipe: Recipe,
    *,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    accumulation: int = 1,
    seed: int = 0,
    workers: int = 0,
    start_step: int = 0,
) -> torch.utils.data.DataLoader:
    """Endless micro-batches of ``(images, labels)`` for this rank (see :class:`InfiniteSampler`), from
    ``workers`` persistent processes, pinned when CUDA is available."""
    sampler = InfiniteSampler(
        len(dataset),
        seed=seed,
        rank=rank,
        world_size=world_size,
        micro_batch=batch_size,
        accumulation=accumulation,
        start_step=start_step,
    )
    return torch.utils.data.DataLoader(
        TrainSamples(dataset, recipe, seed),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        worker_init_fn=functools.partial(seed_worker, seed=seed, rank=rank),
    )
