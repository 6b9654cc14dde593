"""The inference fast path: the same function as the eager model, with less work per image.

:func:`optimize_for_inference` turns a model into an eval-only one that

- folds every BatchNorm into the convolution beside it: after a conv (conv-BN: ResNet, the heads'
  conv-norm-act units, MogaNet's embeddings, the GloRe unit's blocker), and before a 1x1 conv (MogaNet's
  pre-norm blocks), where a BN's shift cannot leak into zero padding;
- folds MogaNet's elementwise tails: the layer scales, the FFN's channel aggregation (a per-channel scale on
  the wide hidden map becomes part of ``fc2``, the subtracted single-channel map a rank-one correction on the
  narrow output), the residual of the gated aggregation and each stage's closing BatchNorm; runs ``fc2`` and
  ``decompose`` as one conv, the wide FFN hidden maps in channel slices and pre-pads the dilated depth-wise
  conv so that oneDNN's fast kernel takes it (:mod:`segzoo.optimize.moganet`);
- runs the dilated ResNets' wide 3x3 convolutions by Winograd F(2x2, 3x3) on the CPU and the GloRe unit's
  1x1 projections on the node side of its graph products (:mod:`segzoo.optimize.resnet`);
- splits the Semantic-FPN neck's output convs into a conv of the narrow input and a stride-2 transposed conv
  of the coarser sum, and lets the FPN head's coarse levels share their last upsampling
  (:mod:`segzoo.optimize.fpn`);
- runs UperNet's 3x3 fusion convolution on the coarse FPN levels before upsampling them
  (:mod:`segzoo.optimize.uper`: the convolution's channel mix commutes with the bilinear resize);
- precomputes the standardized weights of the hybrid ViTs' ResNetV2 stems, runs ViT attention fused
  (``scaled_dot_product_attention``), folds the ViT LayerNorms into the linear layers after them and runs
  those through oneDNN's fused linear where torch has it (GELU and residual adds fused;
  :mod:`segzoo.optimize.vit`), batches the RegionProxy head's mixing and caches the resized position
  embedding;
- picks the memory format per part (``channels_last`` where it is faster on the device);
- optionally wraps the result in ``torch.compile``.

GELU, SiLU, softmax and every nonlinearity stay as they are. Outputs equal the eager model's to float32
rounding (within 1e-5 relative on every registry entry, tested); folding changes the order of float
operations, so they are not bitwise equal.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Literal

import torch
from torch import nn

from segzoo.backbones.moganet import MogaNet
from segzoo.backbones.resnet_dilated import DilatedResNet
from segzoo.heads import FPNHead, FPNNeck
from segzoo.optimize.folding import fold_conv_bn_pairs, freeze_standardized_convs
from segzoo.optimize.fpn import rewrite_fpn
from segzoo.optimize.moganet import fold_moganet
from segzoo.optimize.resnet import WinogradConv2d, optimize_dilated_resnets
from segzoo.optimize.uper import rewrite_uper_heads
from segzoo.optimize.vit import optimize_vits
from segzoo.segmentors import EncoderDecoder

__all__ = ["EvalOnly", "fold", "optimize_for_inference"]

ChannelsLast = Literal["auto"] | bool
_CPU_CHANNELS_LAST = (MogaNet, DilatedResNet, FPNNeck, FPNHead)


def _uses_timm(model: nn.Module) -> bool:
    return any(type(m).__module__.startswith("timm.") for m in model.modules())


def fold(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm and elementwise tail that :mod:`segzoo.optimize` knows, in place; returns ``model``."""
    for module in list(model.modules()):
        if isinstance(module, MogaNet):
            fold_moganet(module)
    fold_conv_bn_pairs(model)
    if _uses_timm(model):
        freeze_standardized_convs(model)
        for module in model.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = True
    return model


def _convert_inputs(memory_format: torch.memory_format) -> Callable:
    """A forward pre-hook that puts the 4-D tensor inputs (or lists of them) in ``memory_format``."""
    def convert(value):
        if torch.is_tensor(value) and value.ndim == 4:
            return value.contiguous(memory_format=memory_format)
        if isinstance(value, (list, tuple)):
            return type(value)(convert(v) for v in value)
        return value

    def hook(module: nn.Module, args: tuple) -> tuple:
        return tuple(convert(a) for a in args)

    return hook


def _parts(model: nn.Module) -> Iterator[nn.Module]:
    """The parts of a segmentor whose memory format is chosen separately; a plain module is one part."""
    if isinstance(model, EncoderDecoder):
        for name in ("backbone", "neck", "decode_head", "auxiliary_head"):
            if hasattr(model, name):
                yield getattr(model, name)
    else:
        yield model


def _prefers_channels_last(part: nn.Module, device: torch.device) -> bool:
    """Whether ``part`` runs faster channels-last on ``device`` (measured, ``benchmarks/RESULTS.md``). On a GPU
    only the dilated ResNets (1.02-1.09x on an H100; MogaNet's depth-wise convolutions ran 0.78-0.86x
    channels-last, the heads and ViT stems no faster). On the CPU MogaNet's depthwise-heavy backbone and the FPN
    neck and head beside it, the dilated ResNets, and the heads whose 3x3 convolutions run by Winograd (EMA,
    GloRe FCN: channels-last transforms, 1.1x), but not mkldnn's dense 3x3 convolutions of the UperNet head
    (0.75-0.95x) nor the token-based ViT and EurNet backbones."""
    if device.type == "cuda":
        return isinstance(part, DilatedResNet)
    return isinstance(part, _CPU_CHANNELS_LAST) or any(isinstance(m, WinogradConv2d) for m in part.modules())


def _set_memory_formats(model: nn.Module, channels_last: ChannelsLast) -> None:
    device = next(model.parameters()).device
    for part in _parts(model):
        wanted = (
            _prefers_channels_last(part, device) if channels_last == "auto" else bool(channels_last)
        )
        memory_format = torch.channels_last if wanted else torch.contiguous_format
        part.to(memory_format=memory_format)
        part.register_forward_pre_hook(_convert_inputs(memory_format))


class EvalOnly:
    """Mixin of fast-path models: they compute the eval-mode function only, so train mode is refused."""

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(
                "this model was optimized for inference (BatchNorm folded into convolutions) and cannot be "
                "trained; train the model from segzoo.create_model(..., fuse=False) instead"
            )
        return super().train(False)


class EncoderDecoderForInference(EvalOnly, EncoderDecoder):
    """An :class:`~segzoo.segmentors.EncoderDecoder` after :func:`optimize_for_inference`."""


_EVAL_ONLY_CLASSES: dict[type, type] = {EncoderDecoder: EncoderDecoderForInference}


def _eval_only_class(cls: type) -> type:
    if issubclass(cls, EvalOnly):
        return cls
    if cls not in _EVAL_ONLY_CLASSES:
        _EVAL_ONLY_CLASSES[cls] = type(f"{cls.__name__}ForInference", (EvalOnly, cls), {})
    return _EVAL_ONLY_CLASSES[cls]


def optimize_for_inference(
    model: nn.Module,
    *,
    channels_last: ChannelsLast = "auto",
    compile: bool = False,
    inplace: bool = False,
) -> nn.Module:
    """An eval-only model computing the same function as ``model`` in eval mode, faster.

    BatchNorms are folded into the adjacent convolutions, MogaNet's layer scales and element scales into its
    1x1 convolutions, and each architecture's costliest parts are rewritten into cheaper forms of the same
    function (see :mod:`segzoo.optimize`). ``channels_last``: ``"auto"`` picks the memory format per part
    (backbone, neck, heads) for the device the model is on now (optimize after moving it), ``True``/``False``
    force it for every part. ``compile`` wraps the result in ``torch.compile``. The result has no gradients and refuses
    ``.train()``; ``model`` itself is left untouched unless ``inplace``.
    """
    if channels_last not in ("auto", True, False):
        raise ValueError(f"channels_last must be 'auto', True or False, got {channels_last!r}")
    with torch.inference_mode(False), torch.no_grad():  # parameters stay normal tensors inside inference_mode
        model = _optimized(model, channels_last, inplace)
    return torch.compile(model) if compile else model


def _optimized(model: nn.Module, channels_last: ChannelsLast, inplace: bool) -> nn.Module:
    if not inplace:
        model = copy.deepcopy(model)  # shares the immutable ``model.info``
    fold(model.eval())
    optimize_dilated_resnets(model)
    rewrite_fpn(model)
    rewrite_uper_heads(model)
    optimize_vits(model)
    model.requires_grad_(False)
    _set_memory_formats(model, channels_last)
    model.__class__ = _eval_only_class(type(model))
    return model
