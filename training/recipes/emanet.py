"""EMANet recipes: leftthomas/EMANet configs (detectron2 master of February 2020)."""

from __future__ import annotations

from segzoo.families.emanet import detectron2_parameter_name
from segzoo.training.recipe import LossSpec, LossTerm, OptimizerSpec, PipelineSpec, Recipe, ScheduleSpec
from segzoo.training.recipes._registry import recipe_from_registry, register_recipes
from segzoo.zoo.records import ModelInfo

# configs/base.yaml SOLVER (BASE_LR 9e-3, BIAS_LR_FACTOR 2, WEIGHT_DECAY_BIAS 0) over detectron2's defaults
# (SGD momentum 0.9, WEIGHT_DECAY 1e-4, WEIGHT_DECAY_NORM 0).
OPTIMIZER = OptimizerSpec(
    type="SGD",
    lr=9e-3,
    weight_decay=1e-4,
    momentum=0.9,
    param_rules="detectron2",
    bias_lr_factor=2.0,
    weight_decay_bias=0.0,
    weight_decay_norm=0.0,
)
# WarmupCosineLR with detectron2's default warm-up: linear over 1000 iterations from a factor of 1/1000.
SCHEDULE = ScheduleSpec(policy="cosine", style="detectron2", warmup="linear", warmup_iters=1000, warmup_ratio=1e-3)
LOSSES = LossSpec(terms=(LossTerm("out", 1.0, "loss_sem_seg"),), convention="detectron2")
# INPUT.MIN_SIZE_TRAIN of configs/r*_{coco,cityscapes}.yaml, INPUT.MAX_SIZE_TRAIN (COCO: detectron2's 1333).
TRAIN_SIZES = {
    "COCO-Stuff54": (tuple(range(640, 801, 32)), 1333),
    "Cityscapes": (tuple(range(800, 1025, 32)), 2048),
}
NOTES = (
    "Optimizer rules as trained: detectron2's build_optimizer of master 2019-11-07 (commit 83670010), which the "
    "EMANet results date from, told norm parameters by name. Upstream names ending norm.weight / norm.bias (the "
    "head's conv-norm units) get weight decay 0 (WEIGHT_DECAY_NORM) at the base rate; every other name ending .bias "
    "(the backbone's BatchNorm biases bn1.bias ..., EMA unit conv1, classifier) lr x 2 and weight decay 0; the rest, "
    "the backbone's BatchNorm weights included, weight decay 1e-4. Today's detectron2 finds norm layers by module "
    "type (since 2020-01-28, e29680b5), which would group the backbone's BatchNorms differently.",
    "WarmupCosineLR multiplies the half cosine over all 30000 iterations by the warm-up factor "
    "1e-3 * (1 - i / 1000) + i / 1000 for i < 1000 (the cosine is not shifted to start after warm-up).",
    "Data: shortest edge drawn from MIN_SIZE_TRAIN ('choice'), longest edge capped at MAX_SIZE_TRAIN, horizontal "
    "flip 0.5, no crop and no photometric distortion (README: 'No RandomCrop used'); images of a batch are "
    "padded to the largest (ImageList: images with 0 after normalization, labels with 255); detectron2's "
    "default DATALOADER.ASPECT_RATIO_GROUPING batches landscape and portrait images separately.",
    "Loss: cross-entropy averaged over the non-ignored pixels, on logits upsampled to the padded input with "
    "align_corners=True inside the head; no auxiliary loss; the EM bases are a buffer updated by moving average, "
    "not trained.",
    "8 GPUs x 2 images (README: --num-gpus 8, IMS_PER_BATCH 16); SyncBN (NaiveSyncBatchNorm, momentum "
    "EMA.BN_MOM 3e-4); backbone from the ImageNet ResNet zips of the README (MODEL.WEIGHTS); "
    "TEST.EVAL_PERIOD 2000, SOLVER.CHECKPOINT_PERIOD 5000 (default).",
)


def emanet_recipe(info: ModelInfo) -> Recipe:
    """The recipe of an EMANet entry."""
    min_sizes, max_size = TRAIN_SIZES[info.dataset]
    seconds_per_iter = info.reported_costs["train time (s/iter)"]
    return recipe_from_registry(
        info,
        optimizer=OPTIMIZER,
        schedule=SCHEDULE,
        losses=LOSSES,
        pipeline=PipelineSpec(
            style="detectron2", min_size_train=min_sizes, max_size_train=max_size, flip_prob=0.5, photometric=False
        ),
        eval_interval=2000,
        checkpoint_interval=5000,
        expected_wall_time=(
            f"about {info.train_iters * seconds_per_iter / 3600:.1f} h on 8 GPUs (the README's train time "
            f"{seconds_per_iter} s/iter x {info.train_iters} iterations, evaluation not included)"
        ),
        notes=NOTES,
    )


register_recipes("emanet", emanet_recipe, lambda info, name: detectron2_parameter_name(name))
