"""One recipe per zoo entry, built from the entry's registry record by its family's recipe module.

Each family module registers a builder (``ModelInfo -> Recipe``) and, where
segzoo names parameters differently from the upstream code, the map from a
segzoo parameter name to the upstream one: upstream's per-parameter rules
match substrings of upstream names, so they must see those names.
"""

from segzoo.training.recipes._registry import (
    RECIPE_BUILDERS,
    UPSTREAM_PARAMETER_NAMES,
    ParameterNameMap,
    RecipeBuilder,
    discover_recipes,
    get_recipe,
    recipe_from_registry,
    register_recipes,
    upstream_parameter_name,
)

__all__ = [
    "RECIPE_BUILDERS",
    "UPSTREAM_PARAMETER_NAMES",
    "ParameterNameMap",
    "RecipeBuilder",
    "discover_recipes",
    "get_recipe",
    "recipe_from_registry",
    "register_recipes",
    "upstream_parameter_name",
]
