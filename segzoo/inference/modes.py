"""Sliding-window inference as mmseg's ``slide_inference`` and RegionProxy's variant of it compute it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

SlideWindows = Literal["shift", "pad"]


def slide_logits(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    num_classes: int,
    crop_size: tuple[int, int],
    stride: tuple[int, int],
    windows: SlideWindows = "shift",
) -> torch.Tensor:
    """Average of the logits of overlapping ``crop_size`` windows, placed every ``stride`` pixels.

    The last window of a row or column is shifted back to end at the image
    border; each pixel's sum is divided by the number of windows that
    covered it. Where the image is smaller than the crop, a window is smaller
    too: ``shift`` (mmseg) feeds it to the model as it is, ``pad``
    (RegionProxy's own routine) zero-pads it at the bottom and right to the
    crop size before the forward and crops the padding off the logits. On
    images at least as large as the crop both variants compute the same.
    """
    n, _, height, width = images.shape
    crop_h, crop_w = crop_size
    stride_h, stride_w = stride
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    total = images.new_zeros((n, num_classes, height, width))
    count = images.new_zeros((n, 1, height, width))
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride_h + crop_h, height), min(c * stride_w + crop_w, width)
            y1, x1 = max(y2 - crop_h, 0), max(x2 - crop_w, 0)
            window = images[:, :, y1:y2, x1:x2]
            if windows == "pad" and (y2 - y1, x2 - x1) != (crop_h, crop_w):
                window = F.pad(window, (0, crop_w - (x2 - x1), 0, crop_h - (y2 - y1)))
            logits = model(window)[:, :, : y2 - y1, : x2 - x1]
            total[:, :, y1:y2, x1:x2] += logits.to(total.dtype)
            count[:, :, y1:y2, x1:x2] += 1
    return total / count
