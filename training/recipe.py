"""A training recipe: everything one upstream config sets to train one zoo entry, as data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from segzoo.zoo.records import UpstreamConfig

# Iterations of a run on custom data that names no length: a fine-tune from published weights (see the README).
FINE_TUNE_ITERS = 2000


@dataclass(frozen=True)
class ParamRule:
    """One mmcv ``paramwise_cfg.custom_keys`` entry: parameters whose name contains ``key`` get these multipliers."""

    key: str
    lr_mult: float = 1.0
    decay_mult: float = 1.0


@dataclass(frozen=True)
class OptimizerSpec:
    """The optimizer and the per-parameter rules of the config that trained the entry.

    ``param_rules`` names whose rules give each parameter its rate and decay:

    - ``mmcv`` (1.x ``DefaultOptimizerConstructor`` with ``paramwise_cfg``):
      ``custom_keys`` are matched as substrings of the parameter's upstream
      name (``prefix.name`` inside any ``module.`` wrapper), longest key first
      (ties alphabetical), and the first hit sets both multipliers; otherwise a
      parameter of a norm layer gets ``norm_decay_mult``, of a depth-wise conv
      ``dwconv_decay_mult``, any other ``bias`` ``bias_decay_mult``, and every
      ``bias`` outside norm layers ``bias_lr_mult``.
    - ``detectron2`` (``build_optimizer`` of master 2019-11-07, commit 83670010,
      which EMANet trained with): it tells norm parameters by their upstream
      name, so a name ending ``norm.weight`` or ``norm.bias`` gets
      ``weight_decay_norm`` (rate unchanged), any other name ending ``.bias``
      ``lr * bias_lr_factor`` and ``weight_decay_bias``, the rest the base rate
      and decay. (Norm layers by module type came on 2020-01-28, e29680b5.)
    """

    type: Literal["SGD", "AdamW"]
    lr: float
    weight_decay: float
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    param_rules: Literal["mmcv", "detectron2"] = "mmcv"
    custom_keys: tuple[ParamRule, ...] = ()
    norm_decay_mult: float = 1.0
    dwconv_decay_mult: float = 1.0
    bias_decay_mult: float = 1.0
    bias_lr_mult: float = 1.0
    bias_lr_factor: float = 1.0
    weight_decay_bias: float | None = None
    weight_decay_norm: float = 0.0
    grad_clip_norm: float | None = None


@dataclass(frozen=True)
class ScheduleSpec:
    """The learning rate at each iteration, as ``style``'s library computes it from a group's base rate.

    ``mmcv`` (``LrUpdaterHook``, ``by_epoch=False``): ``poly`` is
    ``(base - min_lr) * (1 - i / iters) ** power + min_lr``;
    ``cosine_restart`` anneals ``restart_weights[k] * base`` to
    ``min_lr_ratio * base`` by a half cosine over each of ``periods``.
    During warm-up (``i < warmup_iters``) that value is multiplied by
    ``warmup_ratio`` (``constant``) or ``1 - (1 - i / warmup_iters) * (1 - warmup_ratio)`` (``linear``).
    ``detectron2`` (``WarmupCosineLR``/``WarmupMultiStepLR``): ``cosine`` is
    ``base * 0.5 * (1 + cos(pi * i / iters))``, ``step`` is
    ``base * gamma ** (number of steps <= i)``, times the warm-up factor
    ``warmup_ratio * (1 - i / warmup_iters) + i / warmup_iters`` (``linear``)
    or ``warmup_ratio`` (``constant``) before ``warmup_iters``.
    """

    policy: Literal["poly", "cosine", "cosine_restart", "step"]
    style: Literal["mmcv", "detectron2"] = "mmcv"
    power: float = 1.0
    min_lr: float = 0.0
    warmup: Literal["linear", "constant"] | None = None
    warmup_iters: int = 0
    warmup_ratio: float = 0.1
    periods: tuple[int, ...] = ()
    restart_weights: tuple[float, ...] = ()
    min_lr_ratio: float = 0.0
    steps: tuple[int, ...] = ()
    gamma: float = 0.1


@dataclass(frozen=True)
class LossTerm:
    """A cross-entropy on one model output (``out`` or ``aux``) with its weight in the total, logged as ``name``."""

    output: Literal["out", "aux"]
    weight: float = 1.0
    name: str = ""

    @property
    def key(self) -> str:
        """The term's name in :func:`~segzoo.training.compute_losses`'s result."""
        return self.name or f"loss_{self.output}"


@dataclass(frozen=True)
class LossSpec:
    """The loss terms and how cross-entropy is averaged.

    ``mmseg`` (0.x ``CrossEntropyLoss`` without ``avg_non_ignore``): the mean
    over all pixels, ignored ones adding 0. ``detectron2``: the mean over the
    pixels that are not ignored.
    """

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
    from the registry entry; the rest from ``upstream``, the config at the commit the entry records.

    ``gpus`` is the paper's setting (``gpus`` x :attr:`images_per_gpu`);
    ``expected_wall_time`` says how long that setting takes and on what the
    figure rests; ``notes`` every place where the recipe departs from, or
    guesses at, what upstream ran; ``schedule_assumed`` that upstream published no
    schedule at all, so the whole recipe is an assumption (the guide says so).
    """

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
    expected_wall_time: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    schedule_assumed: bool = False

    @property
    def images_per_gpu(self) -> int:
        """Images per GPU in the paper's setting (``batch_size`` over ``gpus``)."""
        return self.batch_size // self.gpus
