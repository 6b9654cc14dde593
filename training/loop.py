"""The training loop every recipe runs: DDP, AMP, gradient accumulation, periodic evaluation, exact resume.

One optimizer step ("iteration") consumes the recipe's total batch:
``world_size`` processes x ``accumulation`` micro-steps x ``batch_size``
images. Gradients of the micro-steps are summed (each loss divided by
``accumulation``) and DDP averages them over processes only on the last
micro-step, so any split of the total batch computes the same step. The data
stream, its augmentation (drawn from the seed and the stream position) and
every process's random state are saved in the checkpoints, so a run killed at
any moment and resumed from its latest checkpoint ends with the same weights.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import resource
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

import segzoo
from segzoo.datasets.folders import CUSTOM_PREFIX, SegmentationFolder, open_data
from segzoo.segmentors import EncoderDecoder
from segzoo.training import checkpoint as ckpt
from segzoo.training.distributed import (
    Processes, barrier, close_processes, gather_to_main, init_processes, mean_over_processes, rng_states,
    seed_everything, set_rng_states,
)
from segzoo.training.losses import compute_losses
from segzoo.training.optim import build_optimizer
from segzoo.training.recipe import Recipe
from segzoo.training.recipes import get_recipe
from segzoo.training.schedules import build_lr_scheduler
from segzoo.zoo.records import to_plain

log = logging.getLogger("segzoo.training")

LOG_NAME = "log.jsonl"
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TrainConfig:
    """The settings of one run, as the command line gives them (``None``: the recipe's value).

    ``data`` is the dataset root of the entry's dataset, or ``custom:DIR`` for
    your own folder (with ``num_classes``). ``batch_size`` is per process;
    ``accumulation`` defaults to what reproduces the recipe's total batch.
    ``pretrained`` (default: only for custom data) starts from the entry's
    published weights; otherwise the ImageNet backbone of the recipe is loaded
    unless ``imagenet`` is off. ``resume`` is ``"latest"`` (the furthest
    checkpoint in ``work_dir``) or a checkpoint file.
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
    return dataclasses.replace(recipe, **changes)


@dataclass(frozen=True)
class BatchSplit:
    """How one optimizer step's images are split: ``world_size`` x ``accumulation`` x ``batch_size``."""

    world_size: int
    batch_size: int
    accumulation: int

    @property
    def total(self) -> int:
        return self.world_size * self.accumulation * self.batch_size


def split_batch(recipe: Recipe, config: TrainConfig, world_size: int) -> BatchSplit:
    """The per-process batch and accumulation that reproduce ``recipe.batch_size`` on ``world_size`` processes.

    Without ``--batch-size``: the paper's images per GPU. An explicit
    ``--accumulation`` wins, with a warning when the total batch then differs.
    """
    batch = config.batch_size or recipe.images_per_gpu
    if config.accumulation is not None:
        split = BatchSplit(world_size, batch, config.accumulation)
        if split.total != recipe.batch_size:
            log.warning("total batch %d (%d processes x %d steps x %d images) differs from the recipe's %d",
                        split.total, world_size, config.accumulation, batch, recipe.batch_size)
        return split
    per_step = world_size * batch
    if recipe.batch_size % per_step:
        raise ValueError(
            f"{recipe.name} trains with {recipe.batch_size} images per step, which {world_size} processes x "
            f"{batch} images cannot split evenly; choose --batch-size so that processes x batch divides "
            f"{recipe.batch_size}, or set --accumulation (changes the total batch)"
        )
    return BatchSplit(world_size, batch, recipe.batch_size // per_step)


def build_model(config: TrainConfig, recipe: Recipe, fresh: bool) -> EncoderDecoder:
    """The model to train: published weights (fine-tuning), else random init plus the recipe's ImageNet backbone.

    ``fresh`` is false when a checkpoint will overwrite every weight (resume): nothing is loaded then.
    """
    kwargs = {} if config.drop_path is None else {"drop_path_rate": config.drop_path}
    pretrained = config.custom_data if config.pretrained is None else config.pretrained
    model = segzoo.create_model(config.entry, pretrained=fresh and pretrained, num_classes=config.num_classes,
                                progress=False if config.quiet else None, **kwargs)
    if fresh and not pretrained and config.imagenet and recipe.imagenet_backbone:
        from segzoo.registry import load_imagenet_backbone  # noqa: PLC0415 (lands with the pretrained backbones)

        load_imagenet_backbone(model, config.entry, progress=False if config.quiet else None)
    return model.train()


def _wrap(model: nn.Module, recipe: Recipe, processes: Processes) -> nn.Module:
    if not processes.distributed:
        return model
    if recipe.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [processes.device.index] if processes.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def _val_dataset(config: TrainConfig, recipe: Recipe) -> SegmentationFolder | None:
    """The ``val`` split the run evaluates on, or ``None`` when evaluation is off (or a custom dataset has none)."""
    if recipe.eval_interval <= 0:
        return None
    info = segzoo.model_info(config.entry)
    folder = Path(config.data.removeprefix(CUSTOM_PREFIX)).expanduser()
    if config.custom_data and not (folder / "images" / "val").is_dir():
        log.warning("%s has no images/val folder: no periodic evaluation", config.data)
        return None
    return open_data(info.dataset, config.data, "val", config.num_classes, info.test_pipeline)


def _memory_mb(device: torch.device) -> float:
    """Peak memory so far: allocated GPU memory, or the process's peak resident size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class _JsonLog:
    """Appends one JSON object per line to the work dir's log (rank 0 only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def _resume_state(config: TrainConfig) -> tuple[Path | None, dict[str, Any] | None]:
    if config.resume is None:
        return None, None
    path = ckpt.latest_checkpoint(config.work_path) if config.resume == "latest" else Path(config.resume)
    if path is None:
        log.warning("no checkpoint in %s yet: starting from iteration 0", config.work_path)
        return None, None
    return path, ckpt.load_checkpoint(path)


def _check_same_run(state: dict[str, Any], recipe: Recipe, split: BatchSplit, path: Path) -> None:
    changed = [k for k, v in to_plain(recipe).items() if state["recipe"].get(k) != v]
    if changed:
        warnings.warn(f"resuming {path} with a recipe that differs in {', '.join(changed)}: the run will not "
                      f"reproduce an uninterrupted one", stacklevel=3)
    saved = state["sampler"]
    if saved["world_size"] != split.world_size:
        warnings.warn(f"{path} was written by {saved['world_size']} processes, this run has {split.world_size}: "
                      f"the data stream goes on exactly, dropout and drop-path draws do not", stacklevel=3)


def train(config: TrainConfig, recipe: Recipe | None = None) -> Path:
    """Run (or resume) training as ``config`` says and return the final checkpoint's path.

    ``recipe`` replaces :func:`resolve_recipe`'s (tests shrink it). Call it in
    every process of a ``torchrun`` launch; it joins and leaves the group.
    """
    from segzoo.training.data import build_train_dataset, build_train_loader  # its pipeline needs torchvision

    check_config(config)
    recipe = recipe or resolve_recipe(config)
    processes = init_processes(config.device)
    try:
        return _train(config, recipe, processes, build_train_dataset, build_train_loader)
    finally:
        close_processes(processes)


def _train(config, recipe, processes, build_train_dataset, build_train_loader) -> Path:
    split = split_batch(recipe, config, processes.world_size)
    work_dir = config.work_path
    resume_path, state = _resume_state(config)
    dataset = build_train_dataset(recipe, config.data, num_classes=config.num_classes)  # fails early on a wrong folder
    val_dataset = _val_dataset(config, recipe)
    if processes.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)  # same initialization on every process
    model = build_model(config, recipe, fresh=state is None).to(processes.device)
    if state is not None:
        model.load_state_dict(state["model"])
    optimizer = build_optimizer(model, recipe)  # before the DDP wrapper: parameter names as upstream's rules see them
    scheduler = build_lr_scheduler(optimizer, recipe)
    scaler = torch.amp.GradScaler(processes.device.type, enabled=config.amp == "fp16")
    wrapped = _wrap(model, recipe, processes)
    start = 0
    if state is not None:
        _check_same_run(state, recipe, split, resume_path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        start = state["iteration"]
    else:
        seed_everything(config.seed + processes.rank)  # per-process draws (drop-path, dropout)
    loader = build_train_loader(
        dataset, recipe, batch_size=split.batch_size, rank=processes.rank, world_size=processes.world_size,
        accumulation=split.accumulation, seed=config.seed, workers=config.workers, start_step=start,
    )
    batches = iter(loader)  # draws the loader's base seed from the global generator: before the restore below
    if state is not None:
        rngs = state["rng"]
        set_rng_states(rngs[processes.rank] if processes.rank < len(rngs) else rngs[0])
        log.info("resumed from %s at iteration %d", resume_path, start)
    run = _Run(config, recipe, processes, split, wrapped, model, optimizer, scheduler, scaler, val_dataset)
    return run.loop(batches, start)


class _Run:
    """The state of a run in progress, and its loop."""

    def __init__(self, config, recipe, processes, split, wrapped, model, optimizer, scheduler, scaler, val_dataset):
        self.config, self.recipe, self.processes, self.split = config, recipe, processes, split
        self.wrapped, self.model, self.optimizer = wrapped, model, optimizer
        self.scheduler, self.scaler = scheduler, scaler
        self.val_dataset = val_dataset
        self.log = _JsonLog(config.work_path / LOG_NAME if processes.is_main else None)
        device_type = processes.device.type
        self.autocast = (torch.autocast(device_type, dtype=_AMP_DTYPES[config.amp]) if config.amp in _AMP_DTYPES
                         else contextlib.nullcontext())

    def step(self, batches) -> dict[str, torch.Tensor]:
        """One optimizer step over ``accumulation`` micro-batches; returns this process's mean loss terms."""
        device, accumulation = self.processes.device, self.split.accumulation
        totals: dict[str, torch.Tensor] = {}
        for micro in range(accumulation):
            images, labels = next(batches)
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            last = micro == accumulation - 1
            sync = contextlib.nullcontext() if last or not self.processes.distributed else self.wrapped.no_sync()
            with sync:
                with self.autocast:
                    losses = compute_losses(self.wrapped, images, labels, self.recipe)
                self.scaler.scale(losses["loss"] / accumulation).backward()
            for name, value in losses.items():  # no .item() here: a GPU keeps running until the log asks
                totals[name] = totals.get(name, 0.0) + value.detach().float() / accumulation
        clip = self.recipe.optimizer.grad_clip_norm
        if clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return totals

    def loop(self, batches, start: int) -> Path:
        recipe, processes, config = self.recipe, self.processes, self.config
        last_path = None
        window_start, window_iters = time.perf_counter(), 0
        with tqdm(total=recipe.iters, initial=start, desc=recipe.name, unit="it", dynamic_ncols=True,
                  disable=True if config.quiet or not processes.is_main else None) as bar:
            for iteration in range(start + 1, recipe.iters + 1):
                lr = self.optimizer.param_groups[0]["lr"]  # the rate this iteration trains with
                losses = self.step(batches)
                window_iters += 1
                done = iteration == recipe.iters
                if iteration % config.log_interval == 0 or done:
                    losses = mean_over_processes({k: v.item() for k, v in losses.items()}, processes)
                    elapsed = time.perf_counter() - window_start
                    images_per_s = window_iters * self.split.total / elapsed
                    eta = (recipe.iters - iteration) * elapsed / window_iters
                    self.log.write({"iter": iteration, **losses, "lr": lr, "images_per_s": round(images_per_s, 3),
                                    "eta_s": round(eta), "memory_mb": round(_memory_mb(processes.device))})
                    bar.set_postfix(loss=f"{losses['loss']:.4f}", lr=f"{lr:.3g}", img_s=f"{images_per_s:.1f}")
                    window_start, window_iters = time.perf_counter(), 0
                bar.update(1)
                if self.val_dataset is not None and (iteration % recipe.eval_interval == 0 or done):
                    self.evaluate(iteration)
                if iteration % recipe.checkpoint_interval == 0 or done:
                    last_path = self.save(iteration)
        if last_path is None:  # resumed from the final checkpoint: nothing left to do
            last_path = ckpt.checkpoint_path(config.work_path, recipe.iters)
        return last_path

    def evaluate(self, iteration: int) -> None:
        from segzoo.evaluation.runner import evaluate

        self.model.eval()
        result = evaluate(self.model, self.val_dataset, progress=False)
        self.model.train()
        self.log.write({"iter": iteration, "eval": result.scalars})
        if self.processes.is_main:
            tqdm.write(f"iteration {iteration}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.scalars.items()))

    def save(self, iteration: int) -> Path:
        rngs = gather_to_main(rng_states(), self.processes)
        path = ckpt.checkpoint_path(self.config.work_path, iteration)
        if self.processes.is_main:
            ckpt.save_checkpoint({
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "iteration": iteration,
                "rng": rngs,
                "sampler": {"seed": self.config.seed, **dataclasses.asdict(self.split)},
                "recipe": to_plain(self.recipe),
                "config": to_plain(self.config),
                "segzoo_version": segzoo.__version__,
            }, path)
        barrier(self.processes)
        return path
