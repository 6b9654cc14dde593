"""The models' roots on the fast path: an eval-only :class:`~segzoo.segmentors.EncoderDecoder` and an eval-only
:class:`~segzoo.features.FeatureExtractor` (what :func:`segzoo.create_backbone` returns)."""

from __future__ import annotations

import torch

from segzoo.features import FeatureExtractor
from segzoo.optimize import EvalOnly, Rewrite
from segzoo.segmentors import EncoderDecoder


class FastEncoderDecoder(EvalOnly, EncoderDecoder):
    """An :class:`~segzoo.segmentors.EncoderDecoder` after :func:`~segzoo.optimize.optimize_for_inference`; a bf16
    model resizes its logits to the input size in float32.

    On the CPU the logits are resized channels-last: PyTorch's channels-last bilinear kernel runs along the
    classes in vector registers, and its results differ from the contiguous kernel's by float32 rounding (the
    measurement: ``benchmarks/RESULTS.md``, "The final resize channels-last")."""

    def _to_input_size(self, logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        layout = torch.channels_last if logits.device.type == "cpu" else torch.preserve_format
        return super()._to_input_size(logits.to(torch.float32, memory_format=layout), images)


class FastFeatureExtractor(EvalOnly, FeatureExtractor):
    """A :class:`~segzoo.features.FeatureExtractor` after :func:`~segzoo.optimize.optimize_for_inference`."""


REWRITES = (
    Rewrite("encoder-decoder segmentor", "rewrite blocks", (EncoderDecoder,), FastEncoderDecoder.from_module),
    Rewrite("feature extractor", "rewrite blocks", (FeatureExtractor,), FastFeatureExtractor.from_module),
)
