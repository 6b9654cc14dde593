"""Sliding-window inference, computing what mmseg's ``slide_inference`` does (whole-image is one forward pass)."""
from __future__ import annotations

import torch
from torch import nn


def slide_logits(
    model: nn.Module, images: torch.Tensor, num_classes: int, crop_size: tuple[int, int], stride: tuple[int, int]
) -> torch.Tensor:
    """Average of the logits of overlapping ``crop_size`` windows, placed every ``stride`` pixels.

    The last window of a row or column is shifted back to end at the image
    border (never padded past it); each pixel's sum is divided by the number
    of windows that covered it. An image smaller than the window is one window.
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
            total[:, :, y1:y2, x1:x2] += model(images[:, :, y1:y2, x1:x2]).to(total.dtype)
            count[:, :, y1:y2, x1:x2] += 1
    return total / count
