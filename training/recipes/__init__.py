"""One recipe per zoo entry, built from the entry's registry record by its family's recipe module.

Each family module registers a builder (``ModelInfo -> Recipe``) and, where
segzoo names parameters differently from the upstream code, the map from a
segzoo parameter name to the upstream one: upstream's per-parameter rules
match substrings of upstream names, so they must see those names.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from segzoo.registry import model_info
from segzoo.zoo.records import ModelInfo
from segzoo.training.recipe import Recipe

RecipeBuilder = Callable[[ModelInfo], Recipe]
ParameterNameMap = Callable[[ModelInfo, str], str]

# family -> builder; each family module registers one.
RECIPE_BUILDERS: dict[str, RecipeBuilder] = {}
# family -> (entry, segzoo parameter name) -> upstream parameter name (identity when absent).
UPSTREAM_PARAMETER_NAMES: dict[str, ParameterNameMap] = {}


def register_recipes(family: str, builder: RecipeBuilder, upstream_name: ParameterNameMap | None = None) -> None:
    """Make ``builder`` the recipe of every entry of ``family``; ``upstream_name`` maps parameter names."""
    if family in RECIPE_BUILDERS:
        raise ValueError(f"family {family!r} already has a recipe builder")
    RECIPE_BUILDERS[family] = builder
    if upstream_name is not None:
        UPSTREAM_PARAMETER_NAMES[family] = upstream_name


def recipe_from_registry(info: ModelInfo, **settings: Any) -> Recipe:
    """A recipe for ``info`` whose iterations, total batch, crop and upstream config are the registry entry's."""
    return Recipe(name=info.name, iters=info.train_iters, batch_size=info.train_batch_size,
                  crop_size=info.crop_size, upstream=info.upstream, **settings)


def get_recipe(name: str) -> Recipe:
    """The recipe that trained the registered model ``name`` (or alias)."""
    info = model_info(name)
    try:
        builder = RECIPE_BUILDERS[info.family]
    except KeyError:
        raise KeyError(f"no training recipe for family {info.family!r} (model {info.name!r}); "
                       f"families with recipes: {sorted(RECIPE_BUILDERS)}") from None
    return builder(info)


def upstream_parameter_name(recipe: Recipe, name: str) -> str:
    """The name upstream's code gives the parameter segzoo calls ``name`` in ``recipe``'s model."""
    info = model_info(recipe.name)
    name_map = UPSTREAM_PARAMETER_NAMES.get(info.family)
    return name_map(info, name) if name_map is not None else name


from segzoo.training.recipes import emanet, eurnet, glore, moganet, regproxy  # noqa: E402,F401  (registers them)
