"""Architecture builders by name, one module per paper family.

A zoo entry names its architecture and arguments; :func:`build_architecture`
turns that into a module. Builders register themselves with
:func:`register_architecture` when their family module is imported below.
"""
from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from segzoo.segmentors import EncoderDecoder

Builder = Callable[..., EncoderDecoder]
_ARCHITECTURES: dict[str, Builder] = {}


def register_architecture(fn: Builder) -> Builder:
    """Register a builder under its function name."""
    if fn.__name__ in _ARCHITECTURES:
        raise ValueError(f"architecture {fn.__name__!r} is registered twice")
    _ARCHITECTURES[fn.__name__] = fn
    return fn


_INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_",
    "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
)
_NO_INIT_LOCK = threading.Lock()


@contextmanager
def _no_weight_init() -> Iterator[None]:
    """In this thread, let ``torch.nn.init`` leave tensors as allocated; other threads are unaffected."""
    owner = threading.get_ident()

    def skipping(init_fn):
        @functools.wraps(init_fn)
        def maybe_init(tensor, *args, **kwargs):
            return tensor if threading.get_ident() == owner else init_fn(tensor, *args, **kwargs)
        return maybe_init

    with _NO_INIT_LOCK:
        originals = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
        for name, init_fn in originals.items():
            setattr(nn.init, name, skipping(init_fn))
        try:
            yield
        finally:
            for name, init_fn in originals.items():
                setattr(nn.init, name, init_fn)


def build_architecture(name: str, initialize: bool = True, **kwargs: Any) -> EncoderDecoder:
    """Build the architecture ``name`` with builder arguments ``kwargs``.

    With ``initialize=False`` the weights are allocated but not initialized,
    for a caller that assigns every tensor from a checkpoint right after.
    """
    try:
        builder = _ARCHITECTURES[name]
    except KeyError:
        raise KeyError(f"no architecture named {name!r}; known: {sorted(_ARCHITECTURES)}") from None
    if initialize:
        return builder(**kwargs)
    with _no_weight_init():
        return builder(**kwargs)


from segzoo.families import moganet  # noqa: E402,F401  (registers the MogaNet builders)
