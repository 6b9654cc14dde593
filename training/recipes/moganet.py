"""MogaNet recipes: Westlake-AI/MogaNet segmentation/configs (mmseg 0.29.1, mmcv 1.x)."""

from __future__ import annotations

from segzoo.training.recipe import OptimizerSpec, ParamRule, Recipe, ScheduleSpec
from segzoo.training.recipes._registry import recipe_from_registry, register_recipes
from segzoo.training.recipes.mmseg import (
    DECODE_LOSS,
    POLY_WITH_WARMUP,
    UPERNET_LOSSES,
    mmseg_pipeline,
    wall_time_estimate,
)
from segzoo.zoo.records import ModelInfo

# sem_fpn/moganet/*.py: gpu_multiples = 2, AdamW lr 1e-4 * 2, weight_decay 1e-4, no paramwise_cfg;
# poly power 0.9, min_lr 0, no warm-up; checkpoint and evaluation every 8000 // 2 iterations.
FPN_OPTIMIZER = OptimizerSpec(type="AdamW", lr=2e-4, weight_decay=1e-4, betas=(0.9, 0.999))
FPN_SCHEDULE = ScheduleSpec(policy="poly", power=0.9, min_lr=0.0)
# upernet/moganet/*.py: AdamW lr 1e-4, weight_decay 0.01, custom_keys layer_scale / scale / norm: decay_mult 0.
UPERNET_OPTIMIZER = OptimizerSpec(
    type="AdamW",
    lr=1e-4,
    weight_decay=0.01,
    betas=(0.9, 0.999),
    custom_keys=(
        ParamRule("layer_scale", decay_mult=0.0),
        ParamRule("scale", decay_mult=0.0),
        ParamRule("norm", decay_mult=0.0),
    ),
)
COMMON_NOTES = (
    "SyncBN everywhere (models/*_moganet.py norm_cfg: stem, conv norms and heads); ImageNet-1K MogaNet weights "
    "through the backbone's init_cfg; mmcv 1.x optimizer_config = {} (no gradient clipping).",
)
FPN_NOTES = (
    "The config scales mmseg's 4-GPU Semantic-FPN schedule to 8 GPUs (gpu_multiples = 2): lr 1e-4 x 2, "
    "160000 // 2 iterations, evaluation/checkpoint every 8000 // 2; 8 GPUs x 4 images (ade20k.py "
    "samples_per_gpu=4).",
    "No paramwise_cfg: every parameter, norms and biases included, has lr 2e-4 and weight decay 1e-4.",
    "The dataset is wrapped in RepeatDataset(times=50), which only moves epoch boundaries; an infinite sampler "
    "sees the same stream of shuffled images.",
)
UPERNET_NOTES = (
    "custom_keys match substrings of the mmseg names, longest key first: 'layer_scale' and 'scale' (which "
    "also catches layer_scale_1/2 and the ElementScale '.sigma.scale' parameters) and 'norm' (norm1/norm2, the "
    "patch-embed and stage-output norms) get no weight decay; the stem's BatchNorm (patch_embed1.projection.1) "
    "and the heads' '.bn' layers are not caught by 'norm' and keep weight decay 0.01, as upstream.",
    "optimizer has _delete_=True, so the SGD base schedule's momentum is dropped; lr_config _delete_ drops its "
    "min_lr 1e-4: poly power 1.0, min_lr 0, linear warm-up 1500 iterations from 1e-6 (mmcv scales the decayed "
    "poly value during warm-up).",
    "8 GPUs x 2 images (data.samples_per_gpu=2); checkpoint and evaluation every 16000 (schedule_160k.py).",
)


def moganet_recipe(info: ModelInfo) -> Recipe:
    """The recipe of a MogaNet Semantic-FPN or UperNet entry."""
    fpn = info.architecture == "moganet_fpn"
    interval = 4000 if fpn else 16000
    return recipe_from_registry(
        info,
        optimizer=FPN_OPTIMIZER if fpn else UPERNET_OPTIMIZER,
        schedule=FPN_SCHEDULE if fpn else POLY_WITH_WARMUP,
        losses=DECODE_LOSS if fpn else UPERNET_LOSSES,
        pipeline=mmseg_pipeline(info),
        eval_interval=interval,
        checkpoint_interval=interval,
        expected_wall_time=wall_time_estimate(info, 0.35 if fpn else 0.4, "8 GPUs (V100/A100 class)"),
        notes=COMMON_NOTES + (FPN_NOTES if fpn else UPERNET_NOTES),
    )


register_recipes("moganet", moganet_recipe)
