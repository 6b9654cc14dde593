"""The inference fast path: the same function as the eager model, with less work per image.

:func:`optimize_for_inference` turns a model into an eval-only one by one ordered table of rewrites. Each
architecture module of this package declares its rewrites as data (a module-level ``REWRITES`` tuple of
:class:`Rewrite`) and the parts that run faster channels-last (``CHANNELS_LAST``); this module collects them
from every public submodule and runs them phase by phase, in the order of :data:`PHASES`:

1. ``fold norms``: every BatchNorm folded into the convolution before it (conv-BN: ResNet, the heads'
   conv-norm-act units, MogaNet's embeddings, the GloRe unit's blocker; :mod:`segzoo.optimize.folding` and
   the architecture modules declare the pairs), and the hybrid ViTs' weight-standardized convolutions
   frozen into plain ones holding the standardized weights;
2. ``fold tails``: MogaNet's blocks rewritten with their pre-norms folded into the 1x1 convolutions after
   them (where a BN's shift cannot leak into zero padding), the layer scales, the FFN's channel aggregation
   (a per-channel scale on the wide hidden map becomes part of ``fc2``, the subtracted single-channel map a
   rank-one correction on the narrow output), the residual of the gated aggregation and each stage's
   closing BatchNorm folded; ``fc2`` and ``decompose`` run as one conv, the wide FFN hidden maps in channel
   slices, and the dilated depth-wise conv is pre-padded so that oneDNN's fast kernel takes it
   (:mod:`segzoo.optimize.moganet`);
3. ``rewrite blocks``, on folded weights: the dilated ResNets' wide 3x3 convolutions by Winograd F(2x2, 3x3)
   on the CPU and their bottlenecks adding the shortcut in place (:mod:`segzoo.optimize.resnet`), and the
   heads' wide 3x3 convolutions on them (:mod:`.emanet`, :mod:`.glore`);
   the GloRe unit's 1x1 projections on the node side of its graph products (:mod:`segzoo.optimize.glore`);
   the Semantic-FPN neck's output convs split into a conv of the narrow input and a stride-2 transposed conv
   of the coarser sum, and the FPN head's coarse levels sharing their
   last upsampling (:mod:`segzoo.optimize.fpn`); UperNet's 3x3 fusion convolution on the coarse levels
   before upsampling them (:mod:`segzoo.optimize.uper`: the convolution's channel mix commutes with the
   bilinear resize); the segmentor itself made eval-only (:mod:`segzoo.optimize.segmentors`). RegionProxy's
   ViTs have no rewrite of their own: none measured faster than eager (:mod:`segzoo.optimize.vit`).

Within a phase the rewrites commute (each changes only modules of its own types, which no other rewrite of
the phase reads), so the table's order inside a phase is irrelevant. Then the memory format is picked per
part (``channels_last`` where it is faster on the device) and, optionally, the result is wrapped in
``torch.compile``.

Every rewrite replaces a module by an instance of an importable class of this package (``Fast<Original>``
for the fast form of a class, a name of its own for a module computing another algorithm, such as
:class:`~segzoo.optimize.resnet.WinogradConv2d`) or folds in place, so fast models pickle, deep-copy and
save with ``torch.save``. GELU, SiLU, softmax and every nonlinearity compute as they are (MogaNet's GELU in
the depth-wise conv's oneDNN op, on the CPU in float32). Outputs equal the
eager model's to float32 rounding (within 1e-5 relative on every registry entry, tested); folding changes
the order of float operations, so they are not bitwise equal.
"""

from __future__ import annotations

import copy
import functools
import importlib
import pkgutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import torch
from torch import nn

from segzoo.segmentors import EncoderDecoder

__all__ = ["EvalOnly", "Float32Island", "compute_dtype", "cpu_computes_bf16", "fold", "optimize_for_inference"]

ChannelsLast = Literal["auto"] | bool
FastT = TypeVar("FastT", bound="EvalOnly")

PHASES = ("fold norms", "fold tails", "rewrite blocks")
"""The phases of the rewrite table, in the order they run; :func:`fold` runs the first two."""
_FOLD_PHASES = PHASES[:2]


@dataclass(frozen=True)
class Rewrite:
    """One fast-path rewrite: ``apply`` takes a module whose class is one of ``targets`` (exactly, not a
    subclass) and returns the module that takes its place (the module itself when it folds in place).

    A target is a class or its ``"module.QualName"``: a name matches only once its module is imported, so
    that declaring a rewrite for a timm-based class imports nothing. ``devices``: the device types the
    rewrite applies on (``None``: all).
    """

    name: str
    phase: str
    targets: tuple[type | str, ...]
    apply: Callable[[nn.Module], nn.Module]
    devices: tuple[str, ...] | None = None
    dtypes: tuple[torch.dtype, ...] | None = None

    def target_names(self) -> frozenset[str]:
        return frozenset(t if isinstance(t, str) else _qualified_name(t) for t in self.targets)


@dataclass(frozen=True)
class PrefersChannelsLast:
    """A part of a segmentor (backbone, neck, head) that is, or holds, a module of one of ``types`` runs faster
    channels-last on the device types ``devices`` (measured: ``benchmarks/RESULTS.md``), in a model computing in
    one of ``dtypes`` (``None``: any)."""

    types: tuple[type, ...]
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...] | None = None


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@functools.cache
def _architecture_modules() -> tuple:
    """The public submodules of this package, each imported once (a leading underscore marks a helper)."""
    return tuple(
        importlib.import_module(f"{__name__}.{info.name}")
        for info in pkgutil.iter_modules(__path__)
        if not info.name.startswith("_")
    )


@functools.cache
def rewrite_table() -> tuple[Rewrite, ...]:
    """Every declared rewrite, in the order of :data:`PHASES`."""
    rewrites = [rewrite for module in _architecture_modules() for rewrite in getattr(module, "REWRITES", ())]
    for rewrite in rewrites:
        if rewrite.phase not in PHASES:
            raise ValueError(f"rewrite {rewrite.name!r} names the unknown phase {rewrite.phase!r}; phases: {PHASES}")
    return tuple(sorted(rewrites, key=lambda rewrite: PHASES.index(rewrite.phase)))


@functools.cache
def _channels_last_preferences() -> tuple[PrefersChannelsLast, ...]:
    return tuple(fact for module in _architecture_modules() for fact in getattr(module, "CHANNELS_LAST", ()))


@dataclass(frozen=True)
class Float32Island:
    """Modules of one of ``types`` (classes or ``"module.QualName"`` names, as in :class:`Rewrite`) run in float32
    in a bf16 model: measured to lose too much in bf16. ``takes_model_input``: the island is the first thing the
    model's input meets (a hybrid ViT's CNN stem), so a model holding one takes its input unrounded."""

    types: tuple[type | str, ...]
    takes_model_input: bool = False

    def matches(self, module: nn.Module) -> bool:
        names = {t if isinstance(t, str) else _qualified_name(t) for t in self.types}
        return any(_qualified_name(cls) in names for cls in type(module).__mro__)


@functools.cache
def _float32_islands() -> tuple[Float32Island, ...]:
    return tuple(island for module in _architecture_modules() for island in getattr(module, "FLOAT32_ISLANDS", ()))


def _apply_rewrites(model: nn.Module, phases: tuple[str, ...], dtype: torch.dtype = torch.float32) -> nn.Module:
    """``model`` after the table's rewrites of ``phases`` for a model to run in ``dtype``; submodules are replaced
    in place, the root returned."""
    parameter = next(model.parameters(), None)
    device_type = parameter.device.type if parameter is not None else "cpu"
    for rewrite in rewrite_table():
        if (
            rewrite.phase not in phases
            or (rewrite.devices is not None and device_type not in rewrite.devices)
            or (rewrite.dtypes is not None and dtype not in rewrite.dtypes)
        ):
            continue
        names = rewrite.target_names()
        for path, module in list(model.named_modules()):
            if _qualified_name(type(module)) not in names:
                continue
            fast = rewrite.apply(module)
            if fast is module:
                continue
            if path:
                model.set_submodule(path, fast)
            else:
                model = fast
    return model


def fold(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm and elementwise tail that :mod:`segzoo.optimize` knows (the table's fold phases)
    in place; returns ``model``, or what replaces it when the model itself is rewritten."""
    return _apply_rewrites(model, _FOLD_PHASES)


class EvalOnly:
    """Mixin of fast-path modules: they compute the eval-mode function only, so train mode is refused."""

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(
                "this model was optimized for inference (BatchNorm folded into convolutions) and cannot be "
                "trained; train the model from segzoo.create_model(..., fuse=False) instead"
            )
        return super().train(False)

    @classmethod
    def from_module(cls: type[FastT], module: nn.Module) -> FastT:
        """An instance of ``cls`` holding ``module``'s parameters, buffers, submodules, hooks and attributes,
        for a fast class that subclasses ``type(module)`` and only overrides methods."""
        if not issubclass(cls, type(module)):
            raise TypeError(f"{cls.__name__} is no fast form of {type(module).__name__}")
        fast = cls.__new__(cls)
        fast.__dict__.update(
            {name: copy.copy(value) if isinstance(value, dict) else value for name, value in vars(module).items()}
        )
        return fast


class FastModule(EvalOnly, nn.Module):
    """The fast form of a model whose class has no fast subclass: holds it as ``module``, runs it, answers
    attribute look-ups from it (as ``torch.compile``'s wrapper does) and saves and loads its state dict under the
    wrapped module's keys."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def state_dict(self, *args, **kwargs):
        """The wrapped module's state dict, under its own keys (no ``module.`` prefix)."""
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":  # not set yet (unpickling): no delegation
                raise
            return getattr(self.module, name)


@dataclass(frozen=True)
class ConvertInputs:
    """A forward pre-hook that puts the 4-D tensor inputs (or lists of them) channels-last or contiguous.

    It holds a bool, not the ``torch.memory_format``, which ``torch.save`` cannot pickle."""

    channels_last: bool

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return tuple(self._convert(a) for a in args)

    def _convert(self, value):
        if torch.is_tensor(value) and value.ndim == 4:
            return value.contiguous(memory_format=_memory_format(self.channels_last))
        if isinstance(value, (list, tuple)):
            return type(value)(self._convert(v) for v in value)
        return value


@dataclass(frozen=True)
class CastInputs:
    """A forward pre-hook that casts the floating-point tensor inputs (or lists of them) to ``dtype``."""

    dtype: torch.dtype

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return tuple(_cast(a, self.dtype) for a in args)


@dataclass(frozen=True)
class CastOutput:
    """A forward hook that casts the floating-point tensor output (or a list of them) to ``dtype``."""

    dtype: torch.dtype

    def __call__(self, module: nn.Module, args: tuple, output):
        return _cast(output, self.dtype)


def _cast(value, dtype: torch.dtype):
    if torch.is_tensor(value) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def _memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def _parts(model: nn.Module) -> Iterator[nn.Module]:
    """The parts of a segmentor whose memory format is chosen separately; a plain module is one part."""
    if isinstance(model, EncoderDecoder):
        for name in ("backbone", "neck", "decode_head", "auxiliary_head"):
            if hasattr(model, name):
                yield getattr(model, name)
    else:
        yield model


def _prefers_channels_last(part: nn.Module, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``part`` runs faster channels-last on ``device`` in ``dtype``, as the architecture modules declare."""
    types = tuple(
        t
        for fact in _channels_last_preferences()
        if device.type in fact.devices and (fact.dtypes is None or dtype in fact.dtypes)
        for t in fact.types
    )
    return any(isinstance(module, types) for module in part.modules())


def _set_memory_formats(model: nn.Module, channels_last: ChannelsLast, dtype: torch.dtype) -> None:
    device = next(model.parameters()).device
    for part in _parts(model):
        wanted = _prefers_channels_last(part, device, dtype) if channels_last == "auto" else bool(channels_last)
        part.to(memory_format=_memory_format(wanted))
        part.register_forward_pre_hook(ConvertInputs(wanted))


@functools.cache
def cpu_computes_bf16() -> bool | None:
    """Whether this CPU has bf16 arithmetic instructions (x86: AVX512-BF16 or AMX-BF16; Arm: BF16), as
    ``/proc/cpuinfo`` lists them; ``None`` where that file is not there to tell."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = {flag for line in text.splitlines() if line.startswith(("flags", "Features")) for flag in line.split()}
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


@functools.cache
def _warn_slow_bf16() -> None:
    """Say once per process that this CPU has no bf16 instructions (or none that can be confirmed)."""
    known = cpu_computes_bf16()
    what = "has no bf16 instructions" if known is False else "cannot be confirmed to have bf16 instructions"
    warnings.warn(
        f"this CPU {what} (AVX512-BF16, AMX-BF16 or Arm BF16): the bf16 model runs, but emulated, and may be "
        f"slower than float32; use float32 (the default) for speed here",
        RuntimeWarning,
        stacklevel=3,
    )


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype a model from :func:`optimize_for_inference` computes in (float32 for any other model)."""
    return getattr(model, "compute_dtype", torch.float32)


def optimize_for_inference(
    model: nn.Module,
    *,
    channels_last: ChannelsLast = "auto",
    compile: bool = False,
    inplace: bool = False,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """An eval-only model computing the same function as ``model`` in eval mode, faster.

    BatchNorms are folded into the adjacent convolutions, MogaNet's layer scales and element scales into its
    1x1 convolutions, and each architecture's costliest parts are rewritten into cheaper forms of the same
    function (see :mod:`segzoo.optimize`). ``channels_last``: ``"auto"`` picks the memory format per part
    (backbone, neck, heads) for the device the model is on now (optimize after moving it), ``True``/``False``
    force it for every part. ``compile`` wraps the result in ``torch.compile``. ``dtype``: ``torch.float32`` (the
    default: the eager function to float32 rounding) or ``torch.bfloat16`` (bf16 weights and activations except the
    float32 islands the module docstring lists; takes and returns float32; put the model on its device first). The
    result has no gradients and refuses ``.train()``; ``model`` itself is left untouched unless ``inplace``.
    """
    if channels_last not in ("auto", True, False):
        raise ValueError(f"channels_last must be 'auto', True or False, got {channels_last!r}")
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype!r}")
    with torch.inference_mode(False), torch.no_grad():  # parameters stay normal tensors inside inference_mode
        model = _optimized(model, channels_last, inplace, dtype)
    return torch.compile(model) if compile else model


def _optimized(model: nn.Module, channels_last: ChannelsLast, inplace: bool, dtype: torch.dtype) -> nn.Module:
    if not inplace:
        model = copy.deepcopy(model)  # shares the immutable ``model.info``
    model = _apply_rewrites(model.eval(), PHASES, dtype)
    model.requires_grad_(False)
    _set_memory_formats(model, channels_last, dtype)
    model = model if isinstance(model, EvalOnly) else FastModule(model)
    if dtype != torch.float32:
        _set_compute_dtype(model, dtype)
    return model


def _cast_own_tensors(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast the floating-point parameters and buffers ``module`` itself holds (not its children's) to ``dtype``."""
    for name, parameter in module.named_parameters(recurse=False):
        if parameter.is_floating_point():
            setattr(module, name, nn.Parameter(parameter.detach().to(dtype), requires_grad=False))
    for name, buffer in module.named_buffers(recurse=False):
        if buffer.is_floating_point():
            setattr(module, name, buffer.to(dtype))


def _set_compute_dtype(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast ``model`` to ``dtype`` but for its float32 islands, which cast their inputs up and their outputs back;
    the model casts its inputs to ``dtype`` and returns float32 (a segmentor's resize runs on float32 logits)."""
    parameter = next(model.parameters(), None)
    if dtype == torch.bfloat16 and (parameter is None or parameter.device.type == "cpu") and not cpu_computes_bf16():
        _warn_slow_bf16()
    inside_island: set[int] = set()
    rounds_input = True
    for module in model.modules():
        island = next((i for i in _float32_islands() if i.matches(module)), None)
        if island is None or id(module) in inside_island:
            continue
        inside_island.update(id(m) for m in module.modules())
        rounds_input = rounds_input and not island.takes_model_input
        module.register_forward_pre_hook(CastInputs(torch.float32))
        module.register_forward_hook(CastOutput(dtype))
    for module in model.modules():  # the islands keep their float32 tensors as they are, never rounded
        if id(module) not in inside_island:
            _cast_own_tensors(module, dtype)
    if rounds_input:
        model.register_forward_pre_hook(CastInputs(dtype))
    model.register_forward_hook(CastOutput(torch.float32))
    model.compute_dtype = dtype
