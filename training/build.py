"""What a run trains and evaluates: the model (published, ImageNet or random start), its DDP wrapper, the val data."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

import segzoo
from segzoo.datasets.folders import CUSTOM_PREFIX, SegmentationFolder, open_data
from segzoo.registry import load_imagenet_backbone
from segzoo.segmentors import EncoderDecoder
from segzoo.training.config import TrainConfig
from segzoo.training.distributed import Processes
from segzoo.training.recipe import Recipe

log = logging.getLogger("segzoo.training")


def build_model(config: TrainConfig, recipe: Recipe, fresh: bool) -> EncoderDecoder:
    """The model to train: published weights (fine-tuning), else random init plus the recipe's ImageNet backbone.

    ``fresh`` is false when a checkpoint will overwrite every weight (resume): nothing is loaded then.
    """
    kwargs = {} if config.drop_path is None else {"drop_path_rate": config.drop_path}
    pretrained = config.custom_data if config.pretrained is None else config.pretrained
    model = segzoo.create_model(
        config.entry,
        pretrained=fresh and pretrained,
        num_classes=config.num_classes,
        progress=False if config.quiet else None,
        **kwargs,
    )
    if fresh and not pretrained and config.imagenet and recipe.imagenet_backbone:
        load_imagenet_backbone(model, config.entry, progress=False if config.quiet else None)
    return model.train()


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
