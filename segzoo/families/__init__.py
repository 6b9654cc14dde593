"""Architecture builders by name, one module per paper family.

A zoo entry names its architecture and arguments; :func:`build_architecture`
turns that into a module. Builders register themselves with
:func:`register_architecture` when their family module is imported below.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from segzoo.segmentors import EncoderDecoder

Builder = Callable[..., EncoderDecoder]
_ARCHITECTURES: dict[str, Builder] = {}


def register_architecture(fn: Builder) -> Builder:
    """Register a builder under its function name."""
    if fn.__name__ in _ARCHITECTURES:
        raise ValueError(f"architecture {fn.__name__!r} is registered twice")
    _ARCHITECTURES[fn.__name__] = fn
    return fn


def build_architecture(name: str, **kwargs: Any) -> EncoderDecoder:
    """Build the architecture ``name`` with builder arguments ``kwargs``."""
    try:
        builder = _ARCHITECTURES[name]
    except KeyError:
        raise KeyError(f"no architecture named {name!r}; known: {sorted(_ARCHITECTURES)}") from None
    return builder(**kwargs)


from segzoo.families import moganet  # noqa: E402,F401  (registers the MogaNet builders)
