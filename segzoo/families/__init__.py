"""Architecture builders by name, one module per paper family.

A zoo entry names its architecture and arguments; :func:`build_architecture`
turns that into a module. Builders register themselves with
:func:`register_architecture` when their family module is imported below,
optionally with a converter from the original checkpoint layout to segzoo's
(timm's ``checkpoint_filter_fn`` idea), which :func:`convert_state_dict` applies,
and a converter from the ImageNet classification file the paper's training
starts from to the backbone's layout, which :func:`convert_imagenet_state_dict`
applies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils._device import DeviceContext

from segzoo.segmentors import EncoderDecoder

Builder = Callable[..., EncoderDecoder]
StateDict = Mapping[str, torch.Tensor]
Converter = Callable[[StateDict], StateDict]
# (ImageNet classification state dict, the segmentor's backbone) -> a state dict for that backbone
ImageNetConverter = Callable[[StateDict, nn.Module], StateDict]
_ARCHITECTURES: dict[str, Builder] = {}
_CONVERTERS: dict[str, Converter] = {}
_IMAGENET_CONVERTERS: dict[str, ImageNetConverter] = {}


def register_architecture(
    fn: Builder | None = None, *, convert: Converter | None = None, convert_imagenet: ImageNetConverter | None = None
) -> Any:
    """Register a builder under its function name: ``@register_architecture`` or
    ``@register_architecture(convert=fn, convert_imagenet=fn2)``.

    ``convert`` maps a state dict in the original checkpoint's layout to
    segzoo's; it must return a segzoo-layout state dict unchanged, since
    segzoo's own files go through it too. ``convert_imagenet`` maps the
    ImageNet classification file the paper starts from to the state dict of
    the built model's ``backbone`` (classifier dropped, names and shapes as
    the backbone has them).
    """

    def register(builder: Builder) -> Builder:
        if builder.__name__ in _ARCHITECTURES:
            raise ValueError(f"architecture {builder.__name__!r} is registered twice")
        _ARCHITECTURES[builder.__name__] = builder
        if convert is not None:
            _CONVERTERS[builder.__name__] = convert
        if convert_imagenet is not None:
            _IMAGENET_CONVERTERS[builder.__name__] = convert_imagenet
        return builder

    return register(fn) if fn is not None else register


def convert_state_dict(architecture: str, state_dict: StateDict) -> StateDict:
    """``state_dict`` in segzoo's layout for ``architecture`` (unchanged when it has no converter)."""
    convert = _CONVERTERS.get(architecture)
    return convert(state_dict) if convert is not None else state_dict


def convert_imagenet_state_dict(architecture: str, state_dict: StateDict, backbone: nn.Module) -> StateDict:
    """An ImageNet classification state dict in the layout of ``backbone``, the backbone of ``architecture``."""
    convert = _IMAGENET_CONVERTERS.get(architecture)
    if convert is None:
        raise NotImplementedError(f"architecture {architecture!r} has no converter for ImageNet backbone files")
    return convert(state_dict, backbone)


def without_classifier(state_dict: StateDict, classifier_keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """``state_dict`` without the classifier tensors named in ``classifier_keys`` (those present)."""
    return {key: tensor for key, tensor in state_dict.items() if key not in classifier_keys}


def build_architecture(name: str, initialize: bool = True, **kwargs: Any) -> EncoderDecoder:
    """Build the architecture ``name`` with builder arguments ``kwargs``.

    With ``initialize=False`` it is built on the meta device (in this thread
    only): tensors with shapes and dtypes but no memory, and no initialization
    run (``torch.nn.init`` returns at once), for a caller that assigns every tensor from a checkpoint right after
    with :func:`segzoo.weights.load_state_dict_strict`, which also computes
    what a checkpoint does not hold.
    """
    try:
        builder = _ARCHITECTURES[name]
    except KeyError:
        raise KeyError(f"no architecture named {name!r}; known: {sorted(_ARCHITECTURES)}") from None
    if initialize:
        return builder(**kwargs)
    with _MetaWithoutInit("meta"):
        return builder(**kwargs)


class _MetaWithoutInit(DeviceContext):
    """``with torch.device("meta")`` that also returns at once from ``torch.nn.init`` functions, which would
    do nothing on meta tensors but cost time on each of the model's layers. Like it, local to this thread."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _INIT_FUNCTIONS:
            return args[0] if args else kwargs["tensor"]
        return super().__torch_function__(func, types, args, kwargs)


_INIT_FUNCTIONS = frozenset(getattr(nn.init, name) for name in nn.init.__all__ if name.endswith("_"))


from segzoo.families import emanet, eurnet, glore, moganet, regproxy  # noqa: E402,F401  (registers the builders)
