"""Images in, normalized model input out, resized the way the entry's upstream test pipeline does."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from segzoo.zoo.records import InferencePipeline, Normalization


def load_image(image: str | Path | Image.Image | np.ndarray) -> Image.Image:
    """An RGB PIL image from a path, a PIL image or an (H, W, 3) uint8 RGB array.

    Files are turned upright by their EXIF orientation, as OpenCV's decoder does upstream.
    """
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            return ImageOps.exif_transpose(opened).convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(image).convert("RGB")
    return image.convert("RGB")


def keep_ratio_shape(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """(H, W) after mmcv's keep-ratio rescale into ``scale`` = (long edge, short edge)."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def _resize_like_uint8(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of 0-255 pixels, rounded back to integers as an 8-bit image resize would be."""
    if tuple(pixels.shape[2:]) == size:
        return pixels
    resized = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
    return resized.round().clamp(0, 255)


def to_pixels(image: Image.Image) -> torch.Tensor:
    """``(1, 3, H, W)`` float RGB pixel values in [0, 255]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0)


def preprocess(
    pixels: torch.Tensor,
    pipeline: InferencePipeline,
    normalization: Normalization,
    ratio: float = 1.0,
    flip: bool = False,
) -> torch.Tensor:
    """Resize ``(1, 3, H, W)`` 0-255 RGB pixels for the model and normalize them.

    ``ratio`` scales the pipeline's target size (mmseg's ``img_ratios``);
    ``flip`` mirrors the resized image horizontally, as the aug-test does.
    """
    scale = (int(pipeline.scale[0] * ratio), int(pipeline.scale[1] * ratio))
    pixels = _resize_like_uint8(pixels, keep_ratio_shape(pixels.shape[2], pixels.shape[3], scale))
    if pipeline.size_divisor:
        d = pipeline.size_divisor
        pixels = _resize_like_uint8(pixels, (math.ceil(pixels.shape[2] / d) * d, math.ceil(pixels.shape[3] / d) * d))
    if flip:
        pixels = pixels.flip(3)
    if normalization.channel_order == "BGR":
        pixels = pixels.flip(1)
    mean = torch.tensor(normalization.mean, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(normalization.std, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean) / std
