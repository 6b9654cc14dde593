"""The settings of one training run, checked, and the entry's recipe with the run's overrides applied."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

import segzoo
from segzoo.datasets.folders import CUSTOM_PREFIX, open_data
from segzoo.training.recipe import FINE_TUNE_ITERS, Recipe
from segzoo.training.recipes import get_recipe
from segzoo.training.schedules import rescaled, with_warmup


@dataclass(frozen=True)
class TrainConfig:
    """The settings of one run, as the command line gives them (``None``: the recipe's value).

    ``data`` is the dataset root of the entry's dataset, or ``custom:DIR`` for
    your own folder (with ``num_classes``). ``batch_size`` is per process;
    ``accumulation`` defaults to what reproduces the recipe's total batch.
    ``pretrained`` (default: only for custom data) starts from the entry's
    published weights; otherwise the ImageNet backbone of the recipe is loaded
    unless ``imagenet`` is off. ``resume`` is ``"latest"`` (the furthest
    checkpoint in ``work_dir``) or a checkpoint file. ``sync_bn`` overrides the
    recipe's SyncBN (which is used only where it works: several processes on
    CUDA devices, whose group uses NCCL). ``tensorboard`` also writes the log as
    TensorBoard scalars (the ``tensorboard`` extra).

    Fine-tuning: ``iters`` or ``epochs`` (of the train split) set the run's
    length and the recipe's schedule is stretched to it (see
    :func:`resolve_recipe`); custom data without either trains
    :data:`FINE_TUNE_ITERS`. ``lr`` replaces the base rate (the per-parameter
    multipliers still apply), ``warmup_iters`` the warm-up length (0: none).
    ``init_from`` is a local checkpoint file to start from instead of any
    published or ImageNet weights.
    """

    entry: str
    data: str | None = None
    num_classes: int | None = None
    work_dir: str | None = None
    resume: str | None = None
    iters: int | None = None
    batch_size: int | None = None
    accumulation: int | None = None
    amp: Literal["bf16", "fp16", "none"] = "none"
    seed: int = 0
    workers: int = 4
    eval_interval: int | None = None
    checkpoint_interval: int | None = None
    log_interval: int = 50
    crop: tuple[int, int] | None = None
    drop_path: float | None = None
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    imagenet: bool = True
    pretrained: bool | None = None
    quiet: bool = False
    sync_bn: bool | None = None
    epochs: float | None = None
    lr: float | None = None
    warmup_iters: int | None = None
    init_from: str | None = None
    tensorboard: bool = False

    @property
    def custom_data(self) -> bool:
        return self.data is not None and self.data.startswith(CUSTOM_PREFIX)

    @property
    def work_path(self) -> Path:
        return Path(self.work_dir or Path("work_dirs") / segzoo.model_info(self.entry).name)


def check_config(config: TrainConfig) -> None:
    """Raise ``ValueError`` naming the option when the data options cannot work, before anything is built."""
    if config.data is None:
        raise ValueError("pass --data-root DIR (the entry's dataset) or --data custom:DIR --num-classes K")
    if config.custom_data != (config.num_classes is not None):
        raise ValueError("--data custom:DIR and --num-classes K go together (K: how many classes your labels have)")
    folder = Path(config.data.removeprefix(CUSTOM_PREFIX)).expanduser()
    if not folder.is_dir():
        raise ValueError(f"data folder {str(folder)!r} is not a folder")


def resolve_recipe(config: TrainConfig) -> Recipe:
    """The entry's recipe with the run's overrides; without any it is the recipe exactly.

    A run length other than the recipe's (``iters``, ``epochs``, or
    :data:`FINE_TUNE_ITERS` on custom data) stretches the whole schedule to it
    (:func:`~segzoo.training.schedules.rescaled`: warm-up, restart periods,
    steps) and the evaluation and checkpoint intervals with it, so the run
    evaluates and saves as often as the paper's did; ``lr``, ``warmup_iters``,
    ``crop`` and explicit intervals then replace the recipe's values.
    """
    recipe = get_recipe(config.entry)
    _check_overrides(config, recipe)
    changes: dict[str, Any] = {}
    iters = run_length(config, recipe)
    if iters != recipe.iters:
        changes["iters"] = iters
        changes["schedule"] = rescaled(recipe.schedule, recipe.iters, iters)
        changes["eval_interval"] = _scaled_interval(recipe.eval_interval, recipe.iters, iters)
        changes["checkpoint_interval"] = _scaled_interval(recipe.checkpoint_interval, recipe.iters, iters)
    if config.lr is not None:
        changes["optimizer"] = dataclasses.replace(recipe.optimizer, lr=config.lr)
    if config.warmup_iters is not None:
        if config.warmup_iters >= iters:
            raise ValueError(
                f"--warmup-iters {config.warmup_iters}: the warm-up would never end in a run of {iters} "
                f"iterations; choose fewer (0: no warm-up)"
            )
        changes["schedule"] = with_warmup(changes.get("schedule", recipe.schedule), config.warmup_iters)
    if config.crop is not None:
        changes["crop_size"] = tuple(config.crop)
    if config.eval_interval is not None:
        changes["eval_interval"] = config.eval_interval
    if config.checkpoint_interval is not None:
        changes["checkpoint_interval"] = config.checkpoint_interval
    if config.sync_bn is not None:
        changes["sync_bn"] = config.sync_bn
    return dataclasses.replace(recipe, **changes)


def run_length(config: TrainConfig, recipe: Recipe) -> int:
    """The run's iterations: ``iters``; else ``ceil(epochs x train images / total batch)``; else
    :data:`FINE_TUNE_ITERS` on custom data; else the recipe's."""
    if config.iters is not None:
        return config.iters
    if config.epochs is not None:
        info = segzoo.model_info(config.entry)
        images = len(open_data(info.dataset, config.data, "train", config.num_classes, info.test_pipeline))
        return max(1, math.ceil(config.epochs * images / _total_batch(config, recipe)))
    return FINE_TUNE_ITERS if config.custom_data else recipe.iters


def _total_batch(config: TrainConfig, recipe: Recipe) -> int:
    """Images per iteration: the recipe's, which the run reproduces unless ``--accumulation`` changes it
    (:func:`segzoo.training.batch.split_batch`; ``WORLD_SIZE`` is the process count ``torchrun`` sets)."""
    if config.accumulation is None:
        return recipe.batch_size
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return world_size * config.accumulation * (config.batch_size or recipe.images_per_gpu)


def _scaled_interval(interval: int, old_iters: int, new_iters: int) -> int:
    """An evaluation or checkpoint interval at the same fraction of the run (0, never, stays 0)."""
    return max(1, round(interval * new_iters / old_iters)) if interval > 0 else 0


def _check_overrides(config: TrainConfig, recipe: Recipe) -> None:
    """Raise ``ValueError`` naming the option when overrides contradict each other or cannot apply."""
    if config.iters is not None and config.epochs is not None:
        raise ValueError("--iters and --epochs both set the run's length; pass one of them")
    if config.epochs is not None and config.data is None:
        raise ValueError("--epochs counts the training images: pass --data-root DIR or --data custom:DIR too")
    if config.crop is not None and recipe.pipeline.style == "detectron2":
        raise ValueError(
            f"--crop: {recipe.name} trains on whole images resized by their shortest edge, as upstream's "
            f"detectron2 config did (INPUT.CROP off, no RandomCrop), so there is no crop to set; leave --crop out"
        )
    if config.init_from is None:
        return
    if config.resume is not None:
        raise ValueError(
            "--init-from starts a new run from a file's weights, --resume goes on with a run; pass one of them"
        )
    if config.pretrained is not None:
        raise ValueError(
            "--init-from sets the starting weights; leave out --pretrained / --from-scratch (they pick others)"
        )
    if not Path(config.init_from).expanduser().is_file():
        raise ValueError(
            f"--init-from {config.init_from}: no such file; pass a local checkpoint of {recipe.name} (its upstream "
            f"file, a segzoo .safetensors or an iter_*.pth that segzoo train wrote)"
        )
