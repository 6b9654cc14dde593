"""GloRe recipes: no segmentation config was published (facebookresearch/GloRe ships the code in its weight
archives); what the recipe assumes is said in its notes."""

from __future__ import annotations

from segzoo.training.recipe import OptimizerSpec, PipelineSpec, Recipe, ScheduleSpec
from segzoo.training.recipes._registry import recipe_from_registry, register_recipes
from segzoo.training.recipes.mmseg import DECODE_LOSS
from segzoo.zoo.records import ModelInfo

# The authors' own training code (train_model.py) uses SGD, momentum 0.9, weight decay 1e-4; lr 0.01 and poly 0.9
# are the dilated-FCN Cityscapes standard of the time.
OPTIMIZER = OptimizerSpec(type="SGD", lr=0.01, weight_decay=1e-4, momentum=0.9)
SCHEDULE = ScheduleSpec(policy="poly", power=0.9, min_lr=0.0)
NOTES = (
    "Assumed throughout: GloRe published no segmentation training configuration (the code ships only in the "
    "weight archives, not inspected); this recipe encodes the evident intent, not a released config.",
    "Optimizer: SGD, momentum 0.9 and weight decay 1e-4 as in the authors' own train_model.py, lr 0.01 for "
    "every parameter (their video code's extra rules - no decay on biases, half rate for pretrained layers - "
    "are not assumed for segmentation).",
    "Schedule: poly, power 0.9, no warm-up, 40000 iterations of 8 GPUs x 1 image, whole 1024x2048 images "
    "(the registry's crop) through mmseg-style random rescale 0.5-2.0, crop, flip and photometric distortion.",
    "Loss: cross-entropy on the FCN output only (no auxiliary head, as the registry's model), mmseg's all-pixel "
    "mean; SyncBN assumed; the backbone starts from the deep-stem ImageNet ResNets EMANet names (the registry's "
    "pretrained_backbone, assumed too).",
)


def glore_recipe(info: ModelInfo) -> Recipe:
    """The assumed recipe of a GloRe entry (see :data:`NOTES`)."""
    return recipe_from_registry(
        info,
        optimizer=OPTIMIZER,
        schedule=SCHEDULE,
        losses=DECODE_LOSS,
        pipeline=PipelineSpec(style="mmseg", img_scale=(2048, 1024), ratio_range=(0.5, 2.0)),
        eval_interval=4000,
        checkpoint_interval=4000,
        expected_wall_time=(
            f"about {info.train_iters * 1.0 / 3600:.0f} h on 8 GPUs (estimate: {info.train_iters} iterations x "
            "~1 s/iter for a dilated ResNet at output stride 8 on whole 1024x2048 images, one per GPU; nothing "
            "published; measure with benchmarks/train.py)"
        ),
        notes=NOTES,
        schedule_assumed=True,
    )


register_recipes("glore", glore_recipe)
