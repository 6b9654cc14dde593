"""The final resize of the logits to the image's own size, whole or a band of rows at a time.

Upstream resizes ``(N, C, h, w)`` logits to the original ``(H, W)`` with one bilinear
``F.interpolate`` and takes the argmax; on a 5000x5000 photo with 150 classes that tensor
alone is 15 GB. :func:`rescaled_labels` computes the same labels band by band, holding only
``C x band x W`` values at a time. Its bands are bit-identical to the rows of the full
resize, because :func:`resize_rows` reproduces PyTorch's CPU bilinear kernel: source
positions and weights as the kernel computes them (``scale * (i + 0.5) - 0.5`` with a
single rounding), a width pass, then a height pass, each ``a * wa + round(b * wb)`` with a
single rounding, as the kernel's fused multiply-adds do. ``tests/test_inference.py`` checks the equality on many shapes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

# Bytes of float32 band values resized at once (the float64 height pass needs about three times this).
BAND_BYTES = 32 * 2**20
# Full-size scores up to this size are resized whole: same labels, faster than bands.
WHOLE_BYTES = 512 * 2**20

View = tuple[torch.Tensor, bool]  # (N, C, h, w) logits of one aug-test view, and whether it was flipped


def _source_index(in_size: int, out_size: int, positions: range, align_corners: bool) -> tuple[torch.Tensor, ...]:
    """Per output position: the two source positions and their weights, as PyTorch's bilinear kernel computes them."""
    index = torch.arange(positions.start, positions.stop, dtype=torch.float64)
    if align_corners:
        scale = torch.tensor(in_size - 1, dtype=torch.float32) / (out_size - 1) if out_size > 1 else torch.tensor(0.0)
        source = (scale.double() * index).float()
    else:
        scale = torch.tensor(in_size, dtype=torch.float32) / out_size
        source = (scale.double() * (index + 0.5) - 0.5).float().clamp_min(0)  # one rounding, like an FMA
    first = source.floor().long().clamp_max(in_size - 1)
    weight = (source - first).clamp(0, 1)
    second = torch.where(first < in_size - 1, first + 1, first)
    return first, second, (1 - weight).double(), weight


def _blend(a: torch.Tensor, b: torch.Tensor, weight_a: torch.Tensor, weight_b: torch.Tensor) -> torch.Tensor:
    """``a * weight_a + round(b * weight_b)`` with one final rounding: the kernel's fused multiply-add."""
    return torch.addcmul((b * weight_b).double(), a.double(), weight_a).float()


def resize_rows(logits: torch.Tensor, size: tuple[int, int], rows: range, align_corners: bool) -> torch.Tensor:
    """Rows ``rows`` of ``F.interpolate(logits, size, mode="bilinear", align_corners=...)``, bit for bit.

    Valid where PyTorch's CPU kernel takes its general path: outputs with
    ``H + W > 128`` (:func:`rescaled_labels` resizes smaller ones whole).
    """
    device = logits.device
    top, bottom, weight_top, weight_bottom = (
        t.to(device) for t in _source_index(logits.shape[2], size[0], rows, align_corners)
    )
    left, right, weight_left, weight_right = (
        t.to(device) for t in _source_index(logits.shape[3], size[1], range(size[1]), align_corners)
    )
    first, last = int(top.min()), int(bottom.max()) + 1
    needed = logits[:, :, first:last]
    wide = _blend(needed[..., left], needed[..., right], weight_left, weight_right.float())  # width pass first
    column = (-1, 1)
    return _blend(
        wide[:, :, top - first], wide[:, :, bottom - first], weight_top.view(column), weight_bottom.float().view(column)
    )


def _band_probabilities(views: Sequence[View], size: tuple[int, int], rows: range, align_corners: bool) -> torch.Tensor:
    """mmseg's aug-test scores for ``rows``: softmax of each view at full size, flipped back, averaged."""
    total = None
    for logits, flip in views:
        probs = resize_rows(logits, size, rows, align_corners).softmax(dim=1)
        probs = probs.flip(3) if flip else probs
        total = probs if total is None else total + probs
    return total / len(views)


def rescaled_scores(views: Iterable[View], size: tuple[int, int], align_corners: bool, averaged: bool) -> torch.Tensor:
    """``(N, C, H, W)`` scores at full size: the single view's logits, or (``averaged``) mmseg's aug-test average.

    The average is a running sum, as mmseg's ``aug_test`` keeps: each view is
    released once added, so a lazy ``views`` never holds more than one.
    """
    if not averaged:
        ((logits, _),) = views
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)
    total, count = None, 0
    for logits, flip in views:
        probs = F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners).softmax(dim=1)
        del logits
        probs = probs.flip(3) if flip else probs
        total = probs if total is None else total.add_(probs)
        count += 1
    return total / count


def _prepended(first: View, rest: Iterator[View]) -> Iterator[View]:
    """``first``, then ``rest``, holding ``first`` only until it is taken (unlike ``itertools.chain``)."""
    yield first
    del first
    yield from rest


def rescaled_labels(
    views: Iterable[View],
    size: tuple[int, int],
    align_corners: bool,
    averaged: bool,
    dtype: torch.dtype = torch.int64,
    band_bytes: int = BAND_BYTES,
    whole_bytes: int = WHOLE_BYTES,
) -> torch.Tensor:
    """``(N, H, W)`` argmax of :func:`rescaled_scores`, computed a band of rows at a time when the full-size
    scores would take more than ``whole_bytes``.

    Equal to ``rescaled_scores(...).argmax(1)`` while holding only about
    ``band_bytes`` of full-size scores at once. The bands follow PyTorch's CPU
    kernel; on other devices they can differ from the full resize in the last
    bit, which only matters for exact ties. Full-size scores that fit in
    ``whole_bytes`` are a running sum over the views (see :func:`rescaled_scores`);
    bands need every view's logits at once.
    """
    views = iter(views)
    first = next(views)
    n, channels = first[0].shape[:2]
    views = _prepended(first, views)
    del first
    height, width = size
    small = 4 * n * channels * height * width <= whole_bytes
    if small or height + width <= 128:  # (PyTorch resizes outputs this small with another kernel)
        return rescaled_scores(views, size, align_corners, averaged).argmax(dim=1).to(dtype)
    views = list(views)
    band = max(1, band_bytes // (4 * n * channels * width))
    labels = torch.empty((n, height, width), dtype=dtype, device=views[0][0].device)
    for start in range(0, height, band):
        rows = range(start, min(start + band, height))
        if averaged:
            scores = _band_probabilities(views, size, rows, align_corners)
        else:
            scores = resize_rows(views[0][0], size, rows, align_corners)
        labels[:, rows.start : rows.stop] = scores.argmax(dim=1).to(dtype)
    return labels
