"""RegionProxy recipes: YiF-Zhang/RegionProxy configs (mmseg 0.17, mmcv 1.3.13)."""

from __future__ import annotations

from segzoo.backbones.vit import VIT_ARCHS
from segzoo.families.regproxy import mmseg_parameter_name
from segzoo.training.recipe import OptimizerSpec, ParamRule, Recipe, ScheduleSpec
from segzoo.training.recipes._registry import recipe_from_registry, register_recipes
from segzoo.training.recipes.mmseg import DECODE_LOSS, POLY_WITH_WARMUP, mmseg_pipeline, wall_time_estimate
from segzoo.zoo.records import ModelInfo

# schedules/adamw+*.py: AdamW lr 6e-5, weight_decay 0.01, no decay on pos_embed, cls_token, '.ln' (mmseg ViT's
# LayerNorms ln1/ln2), dist_token, norm.
OPTIMIZER = OptimizerSpec(
    type="AdamW",
    lr=6e-5,
    weight_decay=0.01,
    betas=(0.9, 0.999),
    custom_keys=tuple(
        ParamRule(key, decay_mult=0.0) for key in ("pos_embed", "cls_token", ".ln", "dist_token", "norm")
    ),
)
# schedules/adamw+cr+*.py: CosineRestart with linear warm-up, restart weights 1, 0.5, 0.25, min_lr_ratio 0.
COSINE_RESTART_PERIODS = {160_000: (20_000, 40_000, 100_000), 80_000: (10_000, 20_000, 50_000)}


def upstream_parameter_name(info: ModelInfo, name: str) -> str:
    """The mmseg 0.17 name of the parameter segzoo calls ``name`` in the RegionProxy model of ``info``."""
    return mmseg_parameter_name(name, hybrid=VIT_ARCHS[info.arch_args["arch"]].resnet_layers is not None)


def regproxy_recipe(info: ModelInfo) -> Recipe:
    """The recipe of a RegionProxy entry: the poly or the cosine-restart AdamW schedule its config names."""
    cosine_restart = "+adamw-cr+" in info.upstream.path
    interval = info.train_iters // 40  # 4000 for 160k, 2000 for 80k (checkpoint_config and evaluation)
    if cosine_restart:
        schedule = ScheduleSpec(
            policy="cosine_restart",
            periods=COSINE_RESTART_PERIODS[info.train_iters],
            restart_weights=(1.0, 0.5, 0.25),
            min_lr_ratio=0.0,
            warmup="linear",
            warmup_iters=1500,
            warmup_ratio=1e-6,
        )
    else:
        schedule = POLY_WITH_WARMUP
    return recipe_from_registry(
        info,
        optimizer=OPTIMIZER,
        schedule=schedule,
        losses=DECODE_LOSS,
        pipeline=mmseg_pipeline(info),
        eval_interval=interval,
        checkpoint_interval=interval,
        expected_wall_time=wall_time_estimate(info, 0.5, "8 V100 GPUs (the README's setting)"),
        notes=COMMON_NOTES + (COSINE_RESTART_NOTES if cosine_restart else ()),
    )


COMMON_NOTES = (
    "8 V100 GPUs x 2 images (README; datasets/*.py samples_per_gpu=2); SyncBN in the ProxyHead; the backbone "
    "starts from AugReg (Ti/S/L, hybrids) or DeiT (B) ImageNet weights through timm (README: "
    "model.pretrained=...); optimizer_config = {} (no gradient clipping).",
    "custom_keys match substrings of the mmseg 0.17 names (segzoo's timm names are mapped back): pos_embed, "
    "cls_token, dist_token, the ViT LayerNorms ('.ln' catches layers.N.ln1/ln2 and the final ln1) and the hybrid "
    "stems' GroupNorms ('norm') get no weight decay; the ProxyHead's '.bn' BatchNorms keep weight decay 0.01.",
    "The loss is mmseg's all-pixel mean cross-entropy on the region-proxy logits (stride 4) resized bilinearly "
    "(align_corners=False) to the label size, which is segzoo's training output at input resolution.",
)
COSINE_RESTART_NOTES = (
    "Does not run as released: the CosineRestart schedule file puts _delete_=True inside lr_config of a base "
    "file; mmcv 1.3.13's Config only pops _delete_ while merging a child into a base, so it survives and "
    "CosineRestartLrUpdaterHook(_delete_=True, ...) raises TypeError. The recipe encodes the evident intent: "
    "cosine restarts over the configured periods with restart weights 1, 0.5, 0.25, min_lr_ratio 0, and a "
    "linear warm-up of 1500 iterations from 1e-6 applied to the cosine value.",
)


register_recipes("regproxy", regproxy_recipe, upstream_parameter_name)
