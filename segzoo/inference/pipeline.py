"""Images in, normalized model input out, computing exactly what the entry's upstream test pipeline feeds its model.

Two upstream pipelines, named by ``InferencePipeline.resize``:

- ``keep_ratio`` (mmseg 0.x with mmcv): OpenCV decodes the file (EXIF orientation applied, 16-bit
  images scaled to 8 bits, CMYK converted by OpenCV's arithmetic),
  ``mmcv.imrescale`` resizes the 8-bit image with ``cv2.resize(..., INTER_LINEAR)`` into
  ``scale``, MogaNet's ``AlignResize`` resizes it again to a multiple of ``size_divisor``,
  the aug-test flips it, and mmcv's ``imnormalize`` computes ``(x - mean) * (1 / std)``
  (the difference in float32, the product in float64 rounded to float32).
- ``shortest_edge`` (detectron2 as of late 2019, which EMANet used): PIL decodes the file
  *without* applying EXIF orientation (detectron2 applied it only from 2019-11-11, after
  EMANet's results), ``ResizeShortestEdge`` picks the size with ``int(x + 0.5)``, PIL's
  ``Image.resize(..., BILINEAR)`` resizes the 8-bit image, and the model computes
  ``(x - mean) / std`` in float32.

Resizing the uint8 image with the library the upstream pipeline used (not a float resize
rounded afterwards) is what makes the input bit-identical.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

from segzoo.zoo.records import InferencePipeline, Normalization


def applies_exif_orientation(pipeline: InferencePipeline | None) -> bool:
    """Whether the upstream image reader turned photos upright by their EXIF orientation tag: OpenCV's (mmcv) did,
    detectron2's PIL reader of 2019 did not."""
    return pipeline is None or pipeline.resize == "keep_ratio"


# PIL modes whose ``convert("RGB")`` equals OpenCV's ``IMREAD_COLOR`` decoding pixel for pixel; files of other
# modes (16-bit greys, CMYK, 32-bit and float images) are decoded by OpenCV itself for the entries it read.
PIL_DECODES_AS_OPENCV = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA"})


def _opencv_rgb(path: str | Path, mode: str) -> np.ndarray:
    """The file decoded as mmcv's ``imfrombytes(..., flag="color")`` decodes it, as (H, W, 3) uint8 RGB."""
    bgr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(
            f"OpenCV, which this entry's upstream pipeline reads images with, cannot decode this {mode!r} image; "
            f"save it as an 8-bit RGB PNG or JPEG"
        )
    return np.ascontiguousarray(bgr[:, :, ::-1])


def load_image(image: str | Path | Image.Image | np.ndarray, pipeline: InferencePipeline | None = None) -> Image.Image:
    """An RGB PIL image from a path, a PIL image or an (H, W, 3) uint8 RGB array.

    Files are read as ``pipeline``'s upstream reader read them (see the module
    docstring): for mmseg's, turned upright by their EXIF orientation and, in a
    mode PIL converts differently (16-bit, CMYK), decoded by OpenCV; for
    detectron2's of 2019, PIL's ``convert("RGB")`` without the orientation.
    """
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:  # PIL checks the header (and decompression bombs) in any case
            if applies_exif_orientation(pipeline) and opened.mode not in PIL_DECODES_AS_OPENCV:
                return Image.fromarray(_opencv_rgb(image, opened.mode))
            upright = ImageOps.exif_transpose(opened) if applies_exif_orientation(pipeline) else opened
            return upright.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(image).convert("RGB")
    return image.convert("RGB")


def keep_ratio_shape(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """(H, W) after mmcv's keep-ratio rescale into ``scale`` = (long edge, short edge)."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def shortest_edge_shape(height: int, width: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """(H, W) after detectron2's test-time ``ResizeShortestEdge(short_edge, max_size)``."""
    factor = short_edge / min(height, width)
    new_h, new_w = (short_edge, factor * width) if height < width else (factor * height, short_edge)
    if max(new_h, new_w) > max_size:
        cap = max_size / max(new_h, new_w)
        new_h, new_w = new_h * cap, new_w * cap
    return int(new_h + 0.5), int(new_w + 0.5)


def _scale_at(pipeline: InferencePipeline, ratio: float) -> tuple[int, int]:
    """``pipeline.scale`` times ``ratio``, rounded down as mmseg's aug-test (and detectron2's) do."""
    return int(pipeline.scale[0] * ratio), int(pipeline.scale[1] * ratio)


def resized_shape(height: int, width: int, pipeline: InferencePipeline, ratio: float = 1.0) -> tuple[int, int]:
    """(H, W) of an image after ``pipeline``'s first resize at ``ratio`` (before any ``size_divisor`` rounding)."""
    first, second = _scale_at(pipeline, ratio)
    if pipeline.resize == "shortest_edge":
        return shortest_edge_shape(height, width, first, second)
    return keep_ratio_shape(height, width, (first, second))


def check_aspect_ratio(
    height: int, width: int, pipeline: InferencePipeline, ratios: tuple[float, ...] = (1.0,)
) -> None:
    """Refuse an image so elongated that ``pipeline``'s resize would leave its short side 0 pixels high.

    Both upstream resizes fit the long side into a fixed length (mmcv's long
    edge, detectron2's cap), so the short side rounds to 0 beyond twice that
    length to one; upstream fails there too, inside OpenCV or the model.
    """
    for ratio in ratios:
        if min(resized_shape(height, width, pipeline, ratio)) < 1:
            first, second = _scale_at(pipeline, min(ratios))
            longest = second if pipeline.resize == "shortest_edge" else max(first, second)
            raise ValueError(
                f"too elongated for this model: its resize "
                f"({pipeline.resize} to {pipeline.scale}{' at the aug-test scales' if len(ratios) > 1 else ''}) "
                f"would make the short side 0 pixels; the most it takes is {2 * longest}:1; crop or pad the image"
            )


def _cv2_bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def resize_image(image: np.ndarray, pipeline: InferencePipeline, ratio: float = 1.0) -> np.ndarray:
    """The (H, W, 3) uint8 image at the model's input size, resized as the upstream pipeline resizes it.

    ``ratio`` scales both numbers of ``pipeline.scale`` (mmseg's ``img_ratios``).
    """
    height, width = image.shape[:2]
    check_aspect_ratio(height, width, pipeline, (ratio,))
    new_h, new_w = resized_shape(height, width, pipeline, ratio)
    if pipeline.resize == "shortest_edge":
        if (new_h, new_w) == (height, width):
            return image
        return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    image = _cv2_bilinear(image, (new_h, new_w))
    if pipeline.size_divisor:
        d = pipeline.size_divisor
        image = _cv2_bilinear(image, (math.ceil(image.shape[0] / d) * d, math.ceil(image.shape[1] / d) * d))
    return image


def normalize(
    image: np.ndarray, pipeline: InferencePipeline, normalization: Normalization, device: torch.device | None = None
) -> torch.Tensor:
    """``(1, 3, H, W)`` float32 model input from an (H, W, 3) uint8 RGB image, in the upstream's arithmetic."""
    image = np.require(image, requirements=("C", "W"))  # a read-only view (e.g. of a PIL image) is copied once
    pixels = torch.from_numpy(image).to(device).permute(2, 0, 1).unsqueeze(0).float()
    if normalization.channel_order == "BGR":
        pixels = pixels.flip(1)
    mean = torch.tensor(normalization.mean, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    std = np.asarray(normalization.std, dtype=np.float32)
    if pipeline.resize == "shortest_edge":
        return (pixels - mean) / torch.from_numpy(std).to(pixels.device).view(1, 3, 1, 1)
    # mmcv (OpenCV) multiplies by the float64 reciprocal of the float32 std, in float64, then rounds to float32.
    inverse_std = torch.from_numpy(1.0 / std.astype(np.float64)).to(pixels.device).view(1, 3, 1, 1)
    return ((pixels - mean).double() * inverse_std).float()


def preprocess(
    image: np.ndarray,
    pipeline: InferencePipeline,
    normalization: Normalization,
    ratio: float = 1.0,
    flip: bool = False,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Model input ``(1, 3, h, w)`` for one (H, W, 3) uint8 RGB image: resize, flip (aug-test), normalize."""
    resized = resize_image(image, pipeline, ratio)
    if flip:
        resized = resized[:, ::-1]
    return normalize(resized, pipeline, normalization, device)
