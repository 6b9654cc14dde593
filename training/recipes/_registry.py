"""The recipe registry: each family's recipe module registers its builder here as it is imported.

The family modules are found, not listed: every public module of the ``recipes``
package is imported once, on the first lookup, so adding a family adds a module
and edits nothing here (and importing :mod:`segzoo.training` stays cheap).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from segzoo.registry import model_info
from segzoo.training.recipe import Recipe
from segzoo.zoo.records import ModelInfo

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


@functools.cache
def discover_recipes() -> None:
    """Import every public module of the ``recipes`` package once, which registers the families' builders."""
    package = __name__.rpartition(".")[0]
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package}.{module.name}")


def recipe_from_registry(info: ModelInfo, **settings: Any) -> Recipe:
    """A recipe for ``info`` whose iterations, total batch, crop and upstream config are the registry entry's."""
    return Recipe(
        name=info.name,
        iters=info.train_iters,
        batch_size=info.train_batch_size,
        crop_size=info.crop_size,
        upstream=info.upstream,
        **settings,
    )


def get_recipe(name: str) -> Recipe:
    """The recipe that trained the registered model ``name`` (or alias)."""
    info = model_info(name)
    discover_recipes()
    try:
        builder = RECIPE_BUILDERS[info.family]
    except KeyError:
        raise KeyError(
            f"no training recipe for family {info.family!r} (model {info.name!r}); "
            f"families with recipes: {sorted(RECIPE_BUILDERS)}"
        ) from None
    return builder(info)


def upstream_parameter_name(recipe: Recipe, name: str) -> str:
    """The name upstream's code gives the parameter segzoo calls ``name`` in ``recipe``'s model."""
    info = model_info(recipe.name)
    discover_recipes()
    name_map = UPSTREAM_PARAMETER_NAMES.get(info.family)
    return name_map(info, name) if name_map is not None else name
