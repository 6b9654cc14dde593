"""The family record and its registry: what segzoo knows about one paper's models, declared once.

A family module (``segzoo/families/<name>.py``) builds one :class:`Family` and passes it to
:func:`register_family`: its entries (the zoo records), its architectures (builder, converters from the
original checkpoint and ImageNet layouts, export support) and how figures show it. Central code
(registry, export, cards, figures, training) iterates over :func:`families` and names no family. Family
modules are discovered, not listed: every module of the ``segzoo.families`` package whose name does not
start with ``_`` is imported on the first question asked of the registry. A family defined elsewhere (a
plug-in, a test) registers the same way.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

from segzoo.export_formats import EXPORT_FORMATS, ExportFormat
from segzoo.weights.converters import Converter, ImageNetConverter, StateDict
from segzoo.zoo.records import ModelInfo

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class FormatSupport:
    """How one export format handles one architecture.

    ``level``: ``"dynamic"`` (any height and width from the exporter's minimum side up), ``"fixed"`` (only
    the height and width exported at) or ``"none"``; ``reason`` says why not more than that.
    """

    level: Literal["dynamic", "fixed", "none"]
    reason: str = ""


DYNAMIC = FormatSupport("dynamic")
EXPORTS_DYNAMICALLY: Mapping[ExportFormat, FormatSupport] = MappingProxyType(dict.fromkeys(EXPORT_FORMATS, DYNAMIC))


def _not_exported() -> Mapping[ExportFormat, FormatSupport]:
    return dict.fromkeys(EXPORT_FORMATS, FormatSupport("none", "no export support is recorded for this architecture"))


@dataclass(frozen=True, eq=False)
class Architecture:
    """One builder of a family, with what loading and exporting its models needs.

    ``convert`` maps a state dict in the original checkpoint's layout to segzoo's and must return a
    segzoo-layout state dict unchanged (segzoo's own files go through it too); ``convert_imagenet`` maps
    the ImageNet classification file the paper starts from to the state dict of the built model's
    ``backbone``. ``export`` is each format's support, measured by exporting at one size and comparing at
    another; ``export_by_variant`` overrides it for the entries whose ``arch_args["arch"]`` is the key.
    """

    build: Builder
    convert: Converter | None = None
    convert_imagenet: ImageNetConverter | None = None
    export: Mapping[ExportFormat, FormatSupport] = field(default_factory=_not_exported)
    export_by_variant: Mapping[str, Mapping[ExportFormat, FormatSupport]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The name entries refer to (``ModelInfo.architecture``): the builder's function name."""
        return self.build.__name__

    def export_support(self, info: ModelInfo) -> Mapping[ExportFormat, FormatSupport]:
        """Each format's support for ``info``'s entry: its variant's where one is recorded."""
        return self.export_by_variant.get(info.arch_args.get("arch"), self.export)


@dataclass(frozen=True, eq=False)
class Family:
    """Everything about one paper's models: its entries, its architectures and how figures show it."""

    name: str  # ModelInfo.family of every entry
    label: str  # the paper's name for its models, as figures and tables print it
    colour: str  # a matplotlib colour, for figures
    entries: tuple[ModelInfo, ...]
    architectures: tuple[Architecture, ...]

    def __post_init__(self) -> None:
        strays = [info.name for info in self.entries if info.family != self.name]
        if strays:
            raise ValueError(f"family {self.name!r} lists entries of another family: {', '.join(strays)}")
        built = {arch.name for arch in self.architectures}
        unbuilt = [info.name for info in self.entries if info.architecture not in built]
        if unbuilt:
            raise ValueError(f"family {self.name!r} has no architecture for {', '.join(unbuilt)}")


_FAMILIES: dict[str, Family] = {}
_ARCHITECTURES: dict[str, Architecture] = {}
_LOCK = threading.RLock()
_discovered = False


def register_family(family: Family) -> Family:
    """Add ``family`` to the registry (once); returns it, so a module can write ``FAMILY = register_family(...)``."""
    with _LOCK:
        if family.name in _FAMILIES:
            raise ValueError(f"family {family.name!r} is registered twice")
        clashes = sorted({arch.name for arch in family.architectures} & set(_ARCHITECTURES))
        if clashes:
            raise ValueError(f"family {family.name!r} registers architectures that exist already: {clashes}")
        known = {info.name for other in _FAMILIES.values() for info in other.entries}
        taken = sorted(known & {info.name for info in family.entries})
        if taken:
            raise ValueError(f"family {family.name!r} registers entry names that exist already: {taken}")
        _FAMILIES[family.name] = family
        _ARCHITECTURES.update((arch.name, arch) for arch in family.architectures)
    return family


def _discover() -> None:
    """Import every family module of this package once, so that each registers itself."""
    global _discovered
    with _LOCK:
        if _discovered:
            return
        _discovered = True
        package = importlib.import_module(__package__)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{__package__}.{module.name}")


def families() -> tuple[Family, ...]:
    """Every registered family, by name (whatever order their modules were imported in)."""
    _discover()
    with _LOCK:
        return tuple(_FAMILIES[name] for name in sorted(_FAMILIES))


def architecture(name: str) -> Architecture:
    """The registered architecture called ``name`` (``ModelInfo.architecture``)."""
    _discover()
    try:
        return _ARCHITECTURES[name]
    except KeyError:
        raise KeyError(f"no architecture named {name!r}; known: {sorted(_ARCHITECTURES)}") from None


def convert_state_dict(architecture_name: str, state_dict: StateDict) -> StateDict:
    """``state_dict`` in segzoo's layout for the architecture (unchanged when it has no converter)."""
    convert = architecture(architecture_name).convert
    return convert(state_dict) if convert is not None else state_dict


def convert_imagenet_state_dict(architecture_name: str, state_dict: StateDict, backbone: nn.Module) -> StateDict:
    """An ImageNet classification state dict in the layout of ``backbone``, the architecture's backbone."""
    convert = architecture(architecture_name).convert_imagenet
    if convert is None:
        raise NotImplementedError(f"architecture {architecture_name!r} has no converter for ImageNet backbone files")
    return convert(state_dict, backbone)


def without_classifier(state_dict: StateDict, classifier_keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """``state_dict`` without the classifier tensors named in ``classifier_keys`` (those present)."""
    return {key: tensor for key, tensor in state_dict.items() if key not in classifier_keys}


class _MetaBuild(TorchFunctionMode):
    """Builds on the meta device without running initialization: tensor constructors given no device make meta
    tensors (as ``with torch.device("meta")`` does), and ``torch.nn.init`` functions and in-place value updates
    of meta tensors return at once (they would do nothing on meta tensors but cost time on each of the model's
    layers). One mode doing both costs one pass through Python per tensor operation of the constructors, not two;
    like any torch function mode, it is local to the thread that enters it."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _INIT_FUNCTIONS:
            return args[0] if args else kwargs["tensor"]
        if func in _VALUE_UPDATES and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            return args[0]
        if func in _CONSTRUCTORS and (kwargs is None or kwargs.get("device") is None):
            kwargs = {**(kwargs or {}), "device": _META}
        return func(*args, **(kwargs or {}))


_INIT_FUNCTIONS = frozenset(getattr(nn.init, name) for name in nn.init.__all__ if name.endswith("_"))
# In-place tensor methods that change values only, which layers' initialization calls directly (a batch norm's
# running statistics, detectron2's He fill through ``normal_``, timm's truncated normal): on a meta tensor they
# change nothing, yet torch runs some as Python decompositions.
_VALUE_UPDATES = frozenset(
    getattr(torch.Tensor, name)
    for name in ("zero_", "fill_", "normal_", "uniform_", "copy_", "erfinv_", "mul_", "add_", "clamp_", "div_")
)
_CONSTRUCTORS = frozenset(_device_constructors())  # the functions torch.device(...) as a context gives a device
_META = torch.device("meta")


def build_architecture(name: str, initialize: bool = True, **kwargs: Any) -> nn.Module:
    """Build the architecture ``name`` with builder arguments ``kwargs``.

    With ``initialize=False`` it is built on the meta device (in this thread only): tensors with shapes and
    dtypes but no memory, and no initialization run, for a caller that assigns every tensor from a checkpoint
    right after with :func:`segzoo.weights.load_state_dict_strict`, which also computes what a checkpoint does
    not hold.
    """
    build = architecture(name).build
    if initialize:
        return build(**kwargs)
    with _MetaBuild():
        return build(**kwargs)
