"""The settings of one training run, checked, and the entry's recipe with the run's overrides applied."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

import segzoo
from segzoo.datasets.folders import CUSTOM_PREFIX
from segzoo.training.recipe import Recipe
from segzoo.training.recipes import get_recipe


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
    CUDA devices, whose group uses NCCL).
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
    """The entry's recipe with the run's overrides (iterations, crop, evaluation and checkpoint intervals)."""
    recipe = get_recipe(config.entry)
    changes: dict[str, Any] = {}
    if config.iters is not None:
        changes["iters"] = config.iters
    if config.crop is not None:
        changes["crop_size"] = tuple(config.crop)
    if config.eval_interval is not None:
        changes["eval_interval"] = config.eval_interval
    if config.checkpoint_interval is not None:
        changes["checkpoint_interval"] = config.checkpoint_interval
    if config.sync_bn is not None:
        changes["sync_bn"] = config.sync_bn
    return dataclasses.replace(recipe, **changes)
