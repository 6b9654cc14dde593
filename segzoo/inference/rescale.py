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

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence

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
    return _resize_source_rows(
        lambda first, last: logits[:, :, first:last], logits.shape[2:], size, rows, align_corners
    )


def _resize_source_rows(
    read_rows: Callable[[int, int], torch.Tensor],
    source_size: Sequence[int],
    size: tuple[int, int],
    rows: range,
    align_corners: bool,
) -> torch.Tensor:
    """:func:`resize_rows` of a source of ``source_size`` (H, W) that ``read_rows(first, last)`` gives row by row
    as ``(N, C, last - first, W)``: only the source rows the output rows need are read."""
    top, bottom, weight_top, weight_bottom = _source_index(source_size[0], size[0], rows, align_corners)
    left, right, weight_left, weight_right = _source_index(source_size[1], size[1], range(size[1]), align_corners)
    first, last = int(top.min()), int(bottom.max()) + 1
    needed = read_rows(first, last)
    device = needed.device
    top, bottom, weight_top, weight_bottom = (t.to(device) for t in (top, bottom, weight_top, weight_bottom))
    left, right, weight_left, weight_right = (t.to(device) for t in (left, right, weight_left, weight_right))
    wide = _blend(needed[..., left], needed[..., right], weight_left, weight_right.float())  # width pass first
    column = (-1, 1)
    return _blend(
        wide[:, :, top - first], wide[:, :, bottom - first], weight_top.view(column), weight_bottom.float().view(column)
    )


class _SpilledView:
    """One aug-test view's ``(N, C, h, w)`` logits kept row by row in an unnamed temporary file (gone when closed,
    or when the process dies), so that the band-by-band resize of a large image holds only the rows each band
    needs, not every view at once."""

    def __init__(self, logits: torch.Tensor, flip: bool) -> None:
        self.shape, self.flip, self.device = tuple(logits.shape), flip, logits.device
        n, channels, height, width = self.shape
        self._row_bytes = 4 * n * channels * width
        self._file = tempfile.TemporaryFile(prefix="segzoo-view-")
        chunk = max(1, BAND_BYTES // self._row_bytes)
        for start in range(0, height, chunk):  # rows first, a chunk at a time: no second copy of the whole view
            rows = logits[:, :, start : start + chunk].permute(2, 0, 1, 3).contiguous().cpu()
            self._file.write(rows.numpy().data)
        self._file.flush()

    def rows(self, first: int, last: int) -> torch.Tensor:
        """``logits[:, :, first:last]``, read back from the file."""
        n, channels, _, width = self.shape
        data = bytearray(os.pread(self._file.fileno(), (last - first) * self._row_bytes, first * self._row_bytes))
        rows = torch.frombuffer(data, dtype=torch.float32).view(last - first, n, channels, width)
        return rows.permute(1, 2, 0, 3).to(self.device)

    def close(self) -> None:
        self._file.close()


def _band_probabilities(
    views: Sequence[_SpilledView], size: tuple[int, int], rows: range, align_corners: bool
) -> torch.Tensor:
    """mmseg's aug-test scores for ``rows``: softmax of each view at full size, flipped back, averaged."""
    total = None
    for view in views:
        probs = _resize_source_rows(view.rows, view.shape[2:], size, rows, align_corners).softmax(dim=1)
        probs = probs.flip(3) if view.flip else probs
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
    bands need every view's logits at once, so an aug-test's views are kept in
    temporary files and read back a band's rows at a time (:class:`_SpilledView`).
    """
    views = iter(views)
    first = next(views)
    n, channels = first[0].shape[:2]
    first_device = first[0].device
    views = _prepended(first, views)
    del first
    height, width = size
    small = 4 * n * channels * height * width <= whole_bytes
    if small or height + width <= 128:  # (PyTorch resizes outputs this small with another kernel)
        return rescaled_scores(views, size, align_corners, averaged).argmax(dim=1).to(dtype)
    band = max(1, band_bytes // (4 * n * channels * width))
    labels = torch.empty((n, height, width), dtype=dtype, device=first_device)
    if not averaged:
        ((logits, _),) = views
        for start in range(0, height, band):
            rows = range(start, min(start + band, height))
            labels[:, rows.start : rows.stop] = resize_rows(logits, size, rows, align_corners).argmax(dim=1).to(dtype)
        return labels
    spilled: list[_SpilledView] = []
    try:
        for logits, flip in views:
            spilled.append(_SpilledView(logits, flip))
            del logits  # before the next view's forward
        for start in range(0, height, band):
            rows = range(start, min(start + band, height))
            labels[:, rows.start : rows.stop] = _band_probabilities(spilled, size, rows, align_corners).argmax(1)
    finally:
        for view in spilled:
            view.close()
    return labels
