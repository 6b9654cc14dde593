"""What a run trains and evaluates: the model (published, ImageNet or random start), its DDP wrapper, the val data."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

import segzoo
from segzoo.datasets.folders import CUSTOM_PREFIX, SegmentationFolder, open_data
from segzoo.registry import load_imagenet_backbone
from segzoo.segmentors import EncoderDecoder
from segzoo.training.config import TrainConfig
from segzoo.training.distributed import Processes
from segzoo.training.recipe import Recipe
from segzoo.weights import CheckpointError, UnsafeCheckpointError

log = logging.getLogger("segzoo.training")

# What a new run starts from (besides an --init-from file), as :func:`starting_weights` says.
PUBLISHED, IMAGENET, RANDOM = "published weights", "ImageNet backbone", "random initialization"


def build_model(config: TrainConfig, recipe: Recipe, fresh: bool) -> EncoderDecoder:
    """The model to train, with the weights :func:`starting_weights` names: the ``--init-from`` file, the
    published weights (fine-tuning), or random init plus the recipe's ImageNet backbone.

    ``fresh`` is false when a checkpoint will overwrite every weight (resume): nothing is loaded then.
    """
    kwargs = {} if config.drop_path is None else {"drop_path_rate": config.drop_path}
    if fresh and config.init_from is not None:
        return _init_from_file(config, kwargs).train()
    start = starting_weights(config, recipe) if fresh else RANDOM
    model = segzoo.create_model(
        config.entry,
        pretrained=start == PUBLISHED,
        num_classes=config.num_classes,
        progress=False if config.quiet else None,
        **kwargs,
    )
    if start == IMAGENET:
        load_imagenet_backbone(model, config.entry, progress=False if config.quiet else None)
    return model.train()


def starting_weights(config: TrainConfig, recipe: Recipe) -> str:
    """What a new run starts from: the ``--init-from`` file's path, :data:`PUBLISHED` (the default on custom
    data), :data:`IMAGENET` (the recipe's backbone file) or :data:`RANDOM`."""
    if config.init_from is not None:
        return config.init_from
    if config.custom_data if config.pretrained is None else config.pretrained:
        return PUBLISHED
    return IMAGENET if config.imagenet and recipe.imagenet_backbone else RANDOM


def _init_from_file(config: TrainConfig, builder_args: dict[str, Any]) -> EncoderDecoder:
    """The entry's model with the weights of the local file ``config.init_from``, in memory the model owns; a
    classifier of another class count than ``num_classes`` is re-initialized (with a warning)."""
    path = Path(config.init_from).expanduser()
    try:
        return segzoo.create_model(config.entry, checkpoint_path=path, num_classes=config.num_classes, **builder_args)
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(
            f"--init-from {path}: {err.__cause__ or err}. If you trust the file, convert it first (`segzoo convert "
            f"{config.entry} --checkpoint {path} --allow-unsafe-pickle --out DIR`) and pass "
            f"--init-from DIR/model.safetensors"
        ) from err
    except CheckpointError as err:
        raise type(err)(
            f"--init-from {path}: {config.entry} cannot start from this file: {err}\nPass a checkpoint of "
            f"{config.entry} (its upstream file, a segzoo .safetensors or an iter_*.pth that segzoo train wrote), "
            f"with --num-classes K if its classifier was fine-tuned to K classes"
        ) from err


def uses_sync_bn(recipe: Recipe, processes: Processes, requested: bool | None = None) -> bool:
    """Whether the run converts BatchNorm to SyncBN: where the recipe (or ``requested``, the ``--sync-bn`` /
    ``--no-sync-bn`` override) has it and it works, i.e. several processes on CUDA devices (their group uses NCCL;
    torch's SyncBatchNorm runs on GPU modules only). Elsewhere plain BatchNorm, said once in the log; a run that
    asks for SyncBN where it cannot work is refused."""
    wanted = recipe.sync_bn if requested is None else requested
    if not (wanted and processes.distributed):
        return False
    if processes.device.type == "cuda":
        return True
    if requested:
        raise ValueError(
            f"--sync-bn: SyncBatchNorm works only with CUDA devices (NCCL), and this run trains on "
            f"{processes.device.type}; leave the option out to train with plain BatchNorm"
        )
    if processes.is_main:
        log.info(
            "SyncBN off: it needs CUDA devices with NCCL and this run trains on %s; plain BatchNorm takes each "
            "process's batch statistics",
            processes.device.type,
        )
    return False


def wrap_model(
    model: nn.Module, recipe: Recipe, processes: Processes, requested_sync_bn: bool | None = None
) -> nn.Module:
    """``model`` as the processes train it: in DDP (with SyncBN where :func:`uses_sync_bn` says) when there are
    several."""
    if not processes.distributed:
        return model
    if uses_sync_bn(recipe, processes, requested_sync_bn):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [processes.device.index] if processes.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def build_val_dataset(config: TrainConfig, recipe: Recipe) -> SegmentationFolder | None:
    """The ``val`` split the run evaluates on, or ``None`` when evaluation is off (or a custom dataset has none)."""
    if recipe.eval_interval <= 0:
        return None
    info = segzoo.model_info(config.entry)
    folder = Path(config.data.removeprefix(CUSTOM_PREFIX)).expanduser()
    if config.custom_data and not (folder / "images" / "val").is_dir():
        log.warning("%s has no images/val folder: no periodic evaluation", config.data)
        return None
    return open_data(info.dataset, config.data, "val", config.num_classes, info.test_pipeline)
