"""The segmentor on the fast path: an eval-only :class:`~segzoo.segmentors.EncoderDecoder`."""

from __future__ import annotations

from segzoo.optimize import EvalOnly, Rewrite
from segzoo.segmentors import EncoderDecoder


class FastEncoderDecoder(EvalOnly, EncoderDecoder):
    """An :class:`~segzoo.segmentors.EncoderDecoder` after :func:`~segzoo.optimize.optimize_for_inference`."""


REWRITES = (Rewrite("encoder-decoder segmentor", "rewrite blocks", (EncoderDecoder,), FastEncoderDecoder.from_module),)
