"""Whole-image inference the way each entry's upstream test pipeline does it."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from segzoo.segmentors import EncoderDecoder
from segzoo.zoo.records import InferencePipeline, ModelInfo


def keep_ratio_shape(height: int, width: int, pipeline: InferencePipeline) -> tuple[int, int]:
    """(H, W) after the keep-ratio resize into ``pipeline.scale`` (mmcv's rule), before alignment."""
    long_edge, short_edge = max(pipeline.scale), min(pipeline.scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def _resize_like_uint8(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of 0-255 pixels, rounded back to integers as an 8-bit image resize would be."""
    if tuple(pixels.shape[2:]) == size:
        return pixels
    resized = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
    return resized.round().clamp(0, 255)


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


def preprocess(image: Image.Image, info: ModelInfo) -> torch.Tensor:
    """A ``(1, 3, H', W')`` model input: resized and normalized as the entry's test pipeline does."""
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32).copy())
    pixels = pixels.permute(2, 0, 1).unsqueeze(0)
    pipeline = info.test_pipeline
    pixels = _resize_like_uint8(pixels, keep_ratio_shape(image.height, image.width, pipeline))
    if pipeline.size_divisor:
        d = pipeline.size_divisor
        aligned = (math.ceil(pixels.shape[2] / d) * d, math.ceil(pixels.shape[3] / d) * d)
        pixels = _resize_like_uint8(pixels, aligned)
    norm = info.normalization
    if norm.channel_order == "BGR":
        pixels = pixels.flip(1)
    mean = torch.tensor(norm.mean).view(1, 3, 1, 1)
    std = torch.tensor(norm.std).view(1, 3, 1, 1)
    return (pixels - mean) / std


@torch.inference_mode()
def predict_whole(model: EncoderDecoder, image: Image.Image, device: str | torch.device = "cpu") -> np.ndarray:
    """Label map ``(H, W)`` at the image's own size, from one forward pass on the resized image."""
    if model.info is None:
        raise ValueError("the model carries no ModelInfo; build it with segzoo.create_model")
    model.eval().to(device)
    logits = model(preprocess(image, model.info).to(device))
    logits = F.interpolate(
        logits, size=(image.height, image.width), mode="bilinear", align_corners=model.align_corners
    )
    return logits.argmax(dim=1)[0].to(torch.uint8 if model.num_classes <= 256 else torch.int64).cpu().numpy()
