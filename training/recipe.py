"""A training recipe: everything one upstream config sets to train one zoo entry, as data."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from segzoo.zoo.records import UpstreamConfig


@dataclass(frozen=True)
class ParamRule:
    """One mmcv ``paramwise_cfg.custom_keys`` entry: parameters whose name contains ``key`` get these multipliers."""

    key: str
    lr_mult: float = 1.0
    decay_mult: float = 1.0


@dataclass(frozen=True)
class OptimizerSpec:
    """The optimizer and the per-parameter rules of the config that trained the entry.

    ``param_rules`` names whose rules apply: ``mmcv`` (``paramwise_cfg``:
    ``custom_keys`` matched as substrings, longest first, first hit wins; then
    ``norm_decay_mult``/``bias_decay_mult``/``bias_lr_mult``) or
    ``detectron2`` (2019 ``SOLVER``: ``bias_lr_factor``, ``weight_decay_bias``,
    ``weight_decay_norm``).
    """

    type: Literal["SGD", "AdamW"]
    lr: float
    weight_decay: float
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    param_rules: Literal["mmcv", "detectron2"] = "mmcv"
    custom_keys: tuple[ParamRule, ...] = ()
    norm_decay_mult: float | None = None
    bias_decay_mult: float | None = None
    bias_lr_mult: float | None = None
    bias_lr_factor: float = 1.0
    weight_decay_bias: float | None = None
    weight_decay_norm: float = 0.0
    grad_clip_norm: float | None = None


@dataclass(frozen=True)
class ScheduleSpec:
    """The learning-rate schedule per iteration, as ``style``'s library computes it.

    ``policy`` ``poly``: ``(lr - min_lr) * (1 - i / iters) ** power + min_lr``;
    ``cosine``; ``step`` at ``steps`` by ``gamma``. ``warmup`` over
    ``warmup_iters`` starting at ``warmup_ratio`` of the rate.
    """

    policy: Literal["poly", "cosine", "step"]
    style: Literal["mmcv", "detectron2"] = "mmcv"
    power: float = 1.0
    min_lr: float = 0.0
    warmup: Literal["linear", "constant"] | None = None
    warmup_iters: int = 0
    warmup_ratio: float = 0.1
    steps: tuple[int, ...] = ()
    gamma: float = 0.1


@dataclass(frozen=True)
class LossTerm:
    """A cross-entropy on one model output (``out`` or ``aux``) with its weight in the total."""

    output: Literal["out", "aux"]
    weight: float = 1.0


@dataclass(frozen=True)
class LossSpec:
    """The loss terms and how cross-entropy is averaged (``convention``: whose reduction)."""

    terms: tuple[LossTerm, ...] = (LossTerm("out"),)
    convention: Literal["mmseg", "detectron2"] = "mmseg"
    ignore_index: int = 255


@dataclass(frozen=True)
class PipelineSpec:
    """The training data pipeline, with the upstream configs' names and defaults (see
    :mod:`segzoo.training.transforms`). The crop is the recipe's ``crop_size``; the dataset reader
    already applies ``LoadAnnotations(reduce_zero_label=True)`` where the dataset needs it (ADE20K).

    ``mmseg`` (mmseg 0.x ``train_pipeline``): ``Resize(img_scale, ratio_range)`` keeping the
    aspect ratio; ``RandomCrop(crop_size, cat_max_ratio)``; ``RandomFlip(prob=flip_prob)``;
    ``PhotoMetricDistortion(brightness_delta, contrast_range, saturation_range, hue_delta)``
    when ``photometric``; ``Normalize``; ``Pad(size=crop_size, pad_val, seg_pad_val)``.

    ``detectron2`` (2019 ``INPUT`` config): ``ResizeShortestEdge(MIN_SIZE_TRAIN,
    MAX_SIZE_TRAIN, MIN_SIZE_TRAIN_SAMPLING)`` as ``min_size_train``, ``max_size_train``,
    ``min_size_train_sampling``; ``RandomFlip(prob=flip_prob)``. ``INPUT.CROP`` stays off (its
    default, which EMANet kept), so whole images train, padded to the largest of the batch.
    """

    style: Literal["mmseg", "detectron2"]
    flip_prob: float = 0.5
    # mmseg
    img_scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    photometric: bool = True
    brightness_delta: int = 32
    contrast_range: tuple[float, float] = (0.5, 1.5)
    saturation_range: tuple[float, float] = (0.5, 1.5)
    hue_delta: int = 18
    pad_val: float = 0.0
    seg_pad_val: int = 255
    # detectron2
    min_size_train: tuple[int, ...] = (800,)
    max_size_train: int = 1333
    min_size_train_sampling: Literal["choice", "range"] = "choice"


@dataclass(frozen=True)
class Recipe:
    """How the entry ``name`` was trained. ``iters``, ``batch_size`` (total, all GPUs) and ``crop_size`` come
    from the registry entry; the rest from ``upstream``, the config at the commit the entry records."""

    name: str
    iters: int
    batch_size: int
    crop_size: tuple[int, int]
    optimizer: OptimizerSpec
    schedule: ScheduleSpec
    losses: LossSpec
    pipeline: PipelineSpec
    upstream: UpstreamConfig
    gpus: int = 8
    sync_bn: bool = True
    eval_interval: int = 16000
    checkpoint_interval: int = 16000
    imagenet_backbone: bool = True
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def images_per_gpu(self) -> int:
        """Images per GPU in the paper's setting (``batch_size`` over ``gpus``)."""
        return self.batch_size // self.gpus
