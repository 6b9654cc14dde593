"""The paper families: one module per paper declares its :class:`Family` (entries, builders, converters,
export support) and registers it; :mod:`segzoo.families._registry` holds the record types and the registry.

Adding a family needs no edit here: a new module in this package is found on the first registry query.
"""

from segzoo.families._registry import (
    EXPORT_FORMATS,
    EXPORTS_DYNAMICALLY,
    Architecture,
    Builder,
    Converter,
    ExportFormat,
    Family,
    FormatSupport,
    ImageNetConverter,
    StateDict,
    architecture,
    build_architecture,
    convert_imagenet_state_dict,
    convert_state_dict,
    families,
    register_family,
    without_classifier,
)

__all__ = [
    "EXPORTS_DYNAMICALLY",
    "EXPORT_FORMATS",
    "Architecture",
    "Builder",
    "Converter",
    "ExportFormat",
    "Family",
    "FormatSupport",
    "ImageNetConverter",
    "StateDict",
    "architecture",
    "build_architecture",
    "convert_imagenet_state_dict",
    "convert_state_dict",
    "families",
    "register_family",
    "without_classifier",
]
