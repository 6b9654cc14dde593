"""EurNet segmentors as the EurNet segmentation configs build them (mmseg 0.2x, UperNet), and the converter of
the ImageNet-1K files their training starts from."""

from __future__ import annotations

import logging
import re

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.backbones.eurnet import EurNet
from segzoo.families import Architecture, Family, FormatSupport, StateDict, register_family, without_classifier
from segzoo.segmentors import EncoderDecoder, upernet
from segzoo.zoo import eurnet as zoo

log = logging.getLogger(__name__)

# What the classification model has and the segmentation backbone has not: the classifier and the norm before
# it (``norm`` on the last stage; the backbone has ``norm0``..``norm3`` instead).
IMAGENET_CLASSIFIER_KEYS = ("head.weight", "head.bias", "norm.weight", "norm.bias")
# The classification model's fixed relative-position table of its kNN edges (a 224x224 grid); the backbone
# computes this term for each input size. Upstream's loader drops every key naming ``relative_pos``.
IMAGENET_RELATIVE_POS = re.compile(r"^stages\.\d+\.graph_construction_model\.edge_layers\.\d+\.relative_pos$")
# Backbone tensors the classification file has no counterpart for: upstream's load leaves them at the
# backbone's initialization (the output norms; the 11x11 and 13x13 context kernels, the file having one 7x7).
IMAGENET_KEPT_INIT = (
    re.compile(r"^norm[0-3]\.(weight|bias)$"),
    re.compile(r"^stages\.\d+\.blocks\.\d+\.graph_conv\.context_layers\.[12]\.0\.weight$"),
)
_FIRST_CONTEXT_KERNEL = re.compile(r"^stages\.\d+\.blocks\.\d+\.graph_conv\.context_layers\.0\.0\.weight$")
_RELATION_WEIGHTS = re.compile(r"^stages\.\d+\.blocks\.\d+\.graph_conv\.weight_linear\.(weight|bias)$")


def convert_imagenet_eurnet(state_dict: StateDict, backbone: nn.Module) -> StateDict:
    """An EurNet ImageNet-1K file (``model`` of the classification training checkpoint) as ``backbone``'s state
    dict, holding what the segmentation code's non-strict load leaves in the backbone.

    Upstream (``mmcv_custom.load_checkpoint`` of the segmentation branch) adapts the file to the backbone:

    * ``absolute_pos_embed`` ``(1, H*W, C)`` becomes ``(1, C, H, W)`` (the same 56x56 grid);
    * the single 7x7 context kernel of each block is zero-padded around its centre to the backbone's first
      context kernel (9x9);
    * ``weight_linear`` has one row per relation plus one for the context: its relation rows fill the
      first rows and its context row the last one (the 13x13 kernel's), and the rows in between (the 9x9
      and 11x11 kernels') are zero, weight and bias alike;
    * the classifier and its norm (:data:`IMAGENET_CLASSIFIER_KEYS`) and the kNN edges' relative-position
      tables (:data:`IMAGENET_RELATIVE_POS`) are dropped.

    The tensors the file has nothing for (:data:`IMAGENET_KEPT_INIT`) are taken from ``backbone`` as it is,
    its own initialization, and named in the log; any other difference is left for the strict load to report.
    """
    expected = backbone.state_dict()
    converted = {
        key: tensor
        for key, tensor in without_classifier(state_dict, IMAGENET_CLASSIFIER_KEYS).items()
        if not IMAGENET_RELATIVE_POS.match(key)
    }
    for key, tensor in converted.items():
        target = expected.get(key)
        if target is None or tensor.shape == target.shape:
            continue
        if key == "absolute_pos_embed":
            converted[key] = _position_grid(tensor, target.shape)
        elif _FIRST_CONTEXT_KERNEL.match(key):
            converted[key] = _centred_in_zeros(tensor, target.shape)
        elif _RELATION_WEIGHTS.match(key):
            converted[key] = _relation_rows(tensor, target.shape)
    kept = [key for key in expected if key not in converted and any(p.match(key) for p in IMAGENET_KEPT_INIT)]
    if kept:
        log.info(
            "EurNet ImageNet file: %d backbone tensors keep their initialization, as upstream's load leaves them: %s",
            len(kept),
            ", ".join(kept),
        )
    return {**converted, **{key: expected[key] for key in kept}}


def _position_grid(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``(1, H*W, C)`` -> ``(1, C, H, W)`` when the grid is the backbone's (else left for the strict load)."""
    n, channels, h, w = shape
    if tensor.shape != (n, h * w, channels):
        return tensor
    return tensor.reshape(n, h, w, channels).permute(0, 3, 1, 2).contiguous()


def _centred_in_zeros(kernel: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A depthwise kernel zero-padded equally on each side to ``shape`` (a larger square kernel)."""
    margin = (shape[-1] - kernel.shape[-1]) // 2
    if kernel.shape[:2] != shape[:2] or margin <= 0 or kernel.shape[-1] + 2 * margin != shape[-1]:
        return kernel
    return F.pad(kernel, (margin,) * 4)


def _relation_rows(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``weight_linear`` rows of the file (relations, then one context row) in the backbone's (relations,
    then one row per context kernel): relation rows first, the context row last, zeros in between."""
    rows = tensor.shape[0]
    if tensor.shape[1:] != shape[1:] or rows >= shape[0]:
        return tensor
    grown = tensor.new_zeros(shape)
    grown[: rows - 1] = tensor[: rows - 1]
    grown[-1] = tensor[-1]
    return grown


def eurnet_upernet(arch: str, num_classes: int = 150, drop_path_rate: float = 0.3) -> EncoderDecoder:
    """EurNet + UperNet head (512 channels) + FCN auxiliary head on stage 3 (256 channels)."""
    return upernet(EurNet(arch, drop_path_rate=drop_path_rate), num_classes)


_PLAN = (
    "EurNet's kNN graph is planned in Python from each stage's grid size (its windows, dilation classes and "
    "the patches completed from ties), so an export holds the plan of the size it was exported at"
)
_ONNX = FormatSupport(
    "fixed",
    _PLAN + "; and onnxruntime's TopK orders equal distances by index where torch.topk need not, so at "
    "sizes where some patches are completed from ties (square inputs of 224x224 or less, narrow ones, or a side "
    "over 1152 pixels) the export's check can fail (measured: 1.4e-3 at 128x160, 6e-7 at the 512x512 crop)",
)

FAMILY = register_family(
    Family(
        name="eurnet",
        label="EurNet",
        colour="#9467bd",
        entries=zoo.ENTRIES,
        architectures=(
            Architecture(
                eurnet_upernet,
                convert_imagenet=convert_imagenet_eurnet,
                export={
                    "onnx": _ONNX,
                    "torchscript": FormatSupport("fixed", _PLAN),
                    "exported-program": FormatSupport("fixed", _PLAN),
                },
            ),
        ),
    )
)
