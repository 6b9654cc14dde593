"""The training loop every recipe runs: DDP, AMP, gradient accumulation, periodic evaluation, exact resume.

One optimizer step ("iteration") consumes the recipe's total batch:
``world_size`` processes x ``accumulation`` micro-steps x ``batch_size``
images. Gradients of the micro-steps are summed (each loss divided by
``accumulation``) and DDP averages them over processes only on the last
micro-step. The data stream, its augmentation and the dropout and drop-path
masks are drawn from the seed and each sample's stream position only, so with
plain BatchNorm any split of the total batch computes the same step (see
:mod:`segzoo.training.drops`). The stream position and every process's random
state are saved in the checkpoints, so a run killed at any moment and resumed
from its latest checkpoint ends with the same weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

import segzoo
from segzoo.evaluation.runner import evaluate as evaluate_model
from segzoo.training import checkpoint as ckpt
from segzoo.training.batch import split_batch
from segzoo.training.build import build_model, build_val_dataset, wrap_model
from segzoo.training.config import TrainConfig, check_config, resolve_recipe
from segzoo.training.data import build_train_dataset, build_train_loader, check_training_data
from segzoo.training.distributed import (
    Processes,
    barrier,
    close_processes,
    gather_to_main,
    init_processes,
    mean_over_processes,
    rng_states,
    seed_everything,
    set_rng_states,
)
from segzoo.training.drops import seed_drops
from segzoo.training.losses import compute_losses
from segzoo.training.optim import build_optimizer
from segzoo.training.recipe import Recipe
from segzoo.training.resume import check_same_run, find_resume_state, restore_optimization
from segzoo.training.run_log import (
    LOG_NAME,
    TENSORBOARD_DIR,
    JsonLog,
    TensorBoardLog,
    peak_memory_mb,
    require_tensorboard,
)
from segzoo.training.schedules import build_lr_scheduler
from segzoo.zoo.records import to_plain

log = logging.getLogger("segzoo.training")

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def train(config: TrainConfig, recipe: Recipe | None = None) -> Path:
    """Run (or resume) training as ``config`` says and return the final checkpoint's path.

    ``recipe`` replaces :func:`resolve_recipe`'s (tests shrink it). Call it in
    every process of a ``torchrun`` launch; it joins and leaves the group.
    """
    check_config(config)
    if config.tensorboard:
        require_tensorboard()
    recipe = recipe or resolve_recipe(config)
    processes = init_processes(config.device)
    try:
        return _train(config, recipe, processes)
    finally:
        close_processes(processes)


def _train(config: TrainConfig, recipe: Recipe, processes: Processes) -> Path:
    """Build the run's parts, in the order that lets a resumed run draw what an uninterrupted one would, and run it."""
    split = split_batch(recipe, config, processes.world_size)
    work_dir = config.work_path
    resume_path, state = find_resume_state(config)
    dataset = build_train_dataset(recipe, config.data, num_classes=config.num_classes)  # fails early on a wrong folder
    val_dataset = build_val_dataset(config, recipe)
    check_training_data([dataset, val_dataset], processes, workers=config.workers, quiet=config.quiet)
    if processes.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        for tmp in ckpt.remove_interrupted_writes(work_dir):
            log.info("removed %s, a checkpoint write that a killed run left unfinished", tmp)
    seed_everything(config.seed)  # same initialization on every process
    model = build_model(config, recipe, fresh=state is None).to(processes.device)
    if state is not None:
        model.load_state_dict(state["model"])
    draws = seed_drops(model, config.seed)
    optimizer = build_optimizer(model, recipe)  # before the DDP wrapper: parameter names as upstream's rules see them
    scheduler = build_lr_scheduler(optimizer, recipe)
    scaler = torch.amp.GradScaler(processes.device.type, enabled=config.amp == "fp16")
    wrapped = wrap_model(model, recipe, processes, config.sync_bn)
    start = 0
    if state is not None:
        check_same_run(state, recipe, split, resume_path)
        start = restore_optimization(state, optimizer, scheduler, scaler)
    else:
        seed_everything(config.seed + processes.rank)  # per-process draws of anything not keyed by stream position
    loader = build_train_loader(
        dataset,
        recipe,
        batch_size=split.batch_size,
        rank=processes.rank,
        world_size=processes.world_size,
        accumulation=split.accumulation,
        seed=config.seed,
        workers=config.workers,
        start_step=start,
    )
    batches = iter(loader)  # draws the loader's base seed from the global generator: before the restore below
    if state is not None:
        rngs = state["rng"]
        set_rng_states(rngs[processes.rank] if processes.rank < len(rngs) else rngs[0])
        log.info("resumed from %s at iteration %d", resume_path, start)
    run = _Run(config, recipe, processes, split, wrapped, model, draws, optimizer, scheduler, scaler, val_dataset)
    if state is not None:
        run.log.keep_until(start)  # the iterations after the checkpoint run again
        run.tensorboard.keep_until(start)
    return run.loop(batches, start)


class _Run:
    """The state of a run in progress, and its loop."""

    def __init__(
        self, config, recipe, processes, split, wrapped, model, draws, optimizer, scheduler, scaler, val_dataset
    ):
        self.config, self.recipe, self.processes, self.split = config, recipe, processes, split
        self.wrapped, self.model, self.draws, self.optimizer = wrapped, model, draws, optimizer
        self.scheduler, self.scaler = scheduler, scaler
        self.val_dataset = val_dataset
        self.log = JsonLog(config.work_path / LOG_NAME if processes.is_main else None)
        tensorboard = processes.is_main and config.tensorboard
        self.tensorboard = TensorBoardLog(config.work_path / TENSORBOARD_DIR if tensorboard else None)
        device_type = processes.device.type
        self.autocast = (
            torch.autocast(device_type, dtype=_AMP_DTYPES[config.amp])
            if config.amp in _AMP_DTYPES
            else contextlib.nullcontext()
        )

    def step(self, batches, iteration: int) -> dict[str, torch.Tensor]:
        """Optimizer step ``iteration`` (1-based) over ``accumulation`` micro-batches; returns this process's mean
        loss terms."""
        device, accumulation = self.processes.device, self.split.accumulation
        totals: dict[str, torch.Tensor] = {}
        for micro in range(accumulation):
            images, labels = next(batches)
            self.draws.start(self.split.positions(iteration - 1, micro, self.processes.rank))
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
        with tqdm(
            total=recipe.iters,
            initial=start,
            desc=recipe.name,
            unit="it",
            dynamic_ncols=True,
            disable=True if config.quiet or not processes.is_main else None,
        ) as bar:
            for iteration in range(start + 1, recipe.iters + 1):
                lr = self.optimizer.param_groups[0]["lr"]  # the rate this iteration trains with
                losses = self.step(batches, iteration)
                window_iters += 1
                done = iteration == recipe.iters
                if iteration % config.log_interval == 0 or done:
                    losses = mean_over_processes({k: v.item() for k, v in losses.items()}, processes)
                    elapsed = time.perf_counter() - window_start
                    images_per_s = window_iters * self.split.total / elapsed
                    eta = (recipe.iters - iteration) * elapsed / window_iters
                    self.write(
                        {
                            "iter": iteration,
                            **losses,
                            "lr": lr,
                            "images_per_s": round(images_per_s, 3),
                            "eta_s": round(eta),
                            "memory_mb": round(peak_memory_mb(processes.device)),
                        }
                    )
                    bar.set_postfix(loss=f"{losses['loss']:.4f}", lr=f"{lr:.3g}", img_s=f"{images_per_s:.1f}")
                    window_start, window_iters = time.perf_counter(), 0
                bar.update(1)
                if self.val_dataset is not None and (iteration % recipe.eval_interval == 0 or done):
                    self.evaluate(iteration)
                if iteration % recipe.checkpoint_interval == 0 or done:
                    last_path = self.save(iteration)
        self.tensorboard.close()
        if last_path is None:  # resumed from the final checkpoint: nothing left to do
            last_path = ckpt.checkpoint_path(config.work_path, recipe.iters)
        return last_path

    def write(self, record: dict) -> None:
        self.log.write(record)
        self.tensorboard.write(record)

    def evaluate(self, iteration: int) -> None:
        self.model.eval()
        result = evaluate_model(self.model, self.val_dataset, progress=False)
        self.model.train()
        self.write({"iter": iteration, "eval": result.scalars})
        if self.processes.is_main:
            tqdm.write(f"iteration {iteration}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.scalars.items()))

    def save(self, iteration: int) -> Path:
        rngs = gather_to_main(rng_states(), self.processes)
        path = ckpt.checkpoint_path(self.config.work_path, iteration)
        if self.processes.is_main:
            ckpt.save_checkpoint(
                {
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
                },
                path,
            )
        barrier(self.processes)
        return path
