"""One recipe per zoo entry, built from the entry's registry record by its family's recipe module."""
from __future__ import annotations

from collections.abc import Callable

from segzoo.registry import model_info
from segzoo.zoo.records import ModelInfo
from segzoo.training.recipe import LossSpec, OptimizerSpec, PipelineSpec, Recipe, ScheduleSpec

RecipeBuilder = Callable[[ModelInfo], Recipe]


def _provisional(info: ModelInfo) -> Recipe:
    """Stand-in until the family modules land: AdamW + poly, mmseg pipeline and loss."""
    return Recipe(
        name=info.name,
        iters=info.train_iters,
        batch_size=info.train_batch_size,
        crop_size=info.crop_size,
        optimizer=OptimizerSpec(type="AdamW", lr=1e-4, weight_decay=1e-4),
        schedule=ScheduleSpec(policy="poly", power=0.9),
        losses=LossSpec(),
        pipeline=PipelineSpec(style="mmseg"),
        upstream=info.upstream,
    )


# family -> builder; each family module registers one.
RECIPE_BUILDERS: dict[str, RecipeBuilder] = {}


def get_recipe(name: str) -> Recipe:
    """The recipe that trained the registered model ``name`` (or alias)."""
    info = model_info(name)
    return RECIPE_BUILDERS.get(info.family, _provisional)(info)
