"""What the mmseg configs of MogaNet, EurNet and RegionProxy share: pipeline, losses, warm-up poly schedule."""

from __future__ import annotations

from segzoo.training.recipe import LossSpec, LossTerm, PipelineSpec, ScheduleSpec
from segzoo.zoo.records import ModelInfo

# mmseg decode head alone (loss_weight 1.0), and UperNet's with the FCN auxiliary head (loss_weight 0.4).
DECODE_LOSS = LossSpec(terms=(LossTerm("out", 1.0, "loss_decode"),))
UPERNET_LOSSES = LossSpec(terms=(LossTerm("out", 1.0, "loss_decode"), LossTerm("aux", 0.4, "loss_aux")))
# lr_config of the AdamW configs: poly, power 1, min_lr 0, linear warm-up over 1500 iterations from 1e-6.
POLY_WITH_WARMUP = ScheduleSpec(
    policy="poly", power=1.0, min_lr=0.0, warmup="linear", warmup_iters=1500, warmup_ratio=1e-6
)


def mmseg_pipeline(info: ModelInfo) -> PipelineSpec:
    """The dataset config's train pipeline: Resize(img_scale, ratio_range=(0.5, 2.0)), RandomCrop(crop,
    cat_max_ratio=0.75), RandomFlip(0.5), PhotoMetricDistortion, Normalize, Pad(crop, 0, seg 255).

    ``img_scale`` is (2048, 1024) for Cityscapes and (2048, crop height) for ADE20K (``ade20k.py``: 512,
    ``ade20k_640x640.py``: 640).
    """
    scale = (2048, 1024) if info.dataset == "Cityscapes" else (2048, info.crop_size[0])
    return PipelineSpec(style="mmseg", img_scale=scale, ratio_range=(0.5, 2.0), cat_max_ratio=0.75, flip_prob=0.5)


def wall_time_estimate(info: ModelInfo, seconds_per_iter: float, gpus: str) -> str:
    """An estimate of the paper's setting's wall time where upstream publishes none, with its basis."""
    hours = info.train_iters * seconds_per_iter / 3600
    return (
        f"about {hours:.0f} h on {gpus} (estimate: {info.train_iters} iterations x ~{seconds_per_iter} s/iter, "
        "a typical mmseg step time for a model of this size at this crop and batch; upstream publishes no "
        "timing; measure one step with benchmarks/train.py for your hardware)"
    )
