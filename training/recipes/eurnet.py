"""EurNet recipes: hirl-team/EurNet-Image (branch seg) segmentation/configs/eurnet (mmseg 0.x, mmcv 1.x)."""

from __future__ import annotations

from segzoo.training.recipe import OptimizerSpec, ParamRule, Recipe
from segzoo.training.recipes._registry import recipe_from_registry, register_recipes
from segzoo.training.recipes.mmseg import POLY_WITH_WARMUP, UPERNET_LOSSES, mmseg_pipeline, wall_time_estimate
from segzoo.zoo.records import ModelInfo

# upernet_eurnet_*_512x512_160k_ade20k.py: AdamW lr 6e-5, weight_decay 0.01, custom_keys
# absolute_pos_embed / relative_position_bias_table / norm: decay_mult 0.
OPTIMIZER = OptimizerSpec(
    type="AdamW",
    lr=6e-5,
    weight_decay=0.01,
    betas=(0.9, 0.999),
    custom_keys=(
        ParamRule("absolute_pos_embed", decay_mult=0.0),
        ParamRule("relative_position_bias_table", decay_mult=0.0),
        ParamRule("norm", decay_mult=0.0),
    ),
)
NOTES = (
    "custom_keys (kept from Swin's config): 'absolute_pos_embed' and 'norm' (block, patch-embed, downsample and "
    "stage-output LayerNorms) get no weight decay; 'relative_position_bias_table' matches nothing in EurNet; "
    "the virtual-node embeddings and the heads' '.bn' BatchNorms keep weight decay 0.01, as upstream.",
    "optimizer and lr_config have _delete_=True over schedule_160k.py's SGD/poly 0.9: poly power 1.0, min_lr 0, "
    "linear warm-up 1500 iterations from 1e-6; checkpoint and evaluation every 16000 (schedule_160k.py).",
    "8 GPUs x 2 images (data.samples_per_gpu=2); SyncBN in both heads; the ImageNet-1K EurNet file is loaded "
    "into the backbone (README: --pretrained); optimizer_config = {} (no gradient clipping).",
)


def eurnet_recipe(info: ModelInfo) -> Recipe:
    """The recipe of a EurNet UperNet entry."""
    return recipe_from_registry(
        info,
        optimizer=OPTIMIZER,
        schedule=POLY_WITH_WARMUP,
        losses=UPERNET_LOSSES,
        pipeline=mmseg_pipeline(info),
        eval_interval=16000,
        checkpoint_interval=16000,
        expected_wall_time=wall_time_estimate(info, 0.6, "8 GPUs (V100/A100 class)"),
        notes=NOTES,
    )


register_recipes("eurnet", eurnet_recipe)
