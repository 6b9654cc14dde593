"""The training data pipelines of the upstream code bases, one sample at a time.

Each op takes its randomness from a ``numpy.random.Generator`` the caller seeds per sample
(see :mod:`segzoo.training.data`): the draws follow each upstream op's distribution, not its
RNG stream. Images are (H, W, 3) uint8 RGB and labels (H, W) uint8 (255 = ignore) until
:meth:`TrainTransform.__call__` normalizes them into tensors.

``mmseg`` (mmsegmentation 0.x with mmcv 1.x; MogaNet, RegionProxy, EurNet):
``Resize(img_scale, ratio_range)`` -> ``RandomCrop(crop_size, cat_max_ratio)`` ->
``RandomFlip(prob)`` -> ``PhotoMetricDistortion`` -> ``Normalize`` -> ``Pad(crop_size)``.
The readers already did ``LoadImageFromFile`` and ``LoadAnnotations(reduce_zero_label)``.

``detectron2`` (the late-2019 library EMANet trained with, default ``DatasetMapper``):
``ResizeShortestEdge(MIN_SIZE_TRAIN, MAX_SIZE_TRAIN, MIN_SIZE_TRAIN_SAMPLING)`` ->
``RandomFlip`` -> the model's ``(x - PIXEL_MEAN) / PIXEL_STD``; no crop (``INPUT.CROP`` off),
and the batch is padded to its largest image (``ImageList.from_tensors``), which
:func:`segzoo.training.data.collate` does.

Which library computes what, and why:

- torchvision.transforms.v2: detectron2's resize (``v2.functional.resize`` on a PIL image is
  PIL's ``Image.resize``, bilinear for the image and nearest for the label, as detectron2
  called it), horizontal flips, and mmseg's ``Pad`` (``v2.functional.pad`` at the bottom and
  right with a constant).
- OpenCV: mmseg's rescale. mmcv resizes the 8-bit image with ``cv2.resize(INTER_LINEAR)``,
  whose fixed-point weights round differently from torchvision's float bilinear, and the
  label with ``INTER_NEAREST``.
- segzoo's own code: the class-ratio crop (torchvision's ``RandomCrop`` cannot reject a
  crop dominated by one class), the photometric distortion (torchvision's ``ColorJitter``
  works in float HSV, shifts hue by a fraction of a turn and does not truncate to uint8
  between steps; mmseg works on OpenCV's 8-bit HSV), and the normalization
  (:func:`segzoo.inference.pipeline.normalize`, which reproduces mmcv's float64 reciprocal
  of the std, and detectron2's plain division).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from segzoo.datasets.folders import IGNORE_INDEX
from segzoo.inference.pipeline import keep_ratio_shape, normalize, shortest_edge_shape
from segzoo.registry import model_info
from segzoo.training.recipe import PipelineSpec, Recipe

# mmseg's RandomCrop: how many crops it checks against cat_max_ratio before taking the next one unchecked.
CROP_TRIES = 10


def random_rescale(
    image: np.ndarray,
    label: np.ndarray,
    img_scale: tuple[int, int],
    ratio_range: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """mmseg's ``Resize(img_scale, ratio_range, keep_ratio=True)``.

    A ratio uniform in ``ratio_range`` scales ``img_scale`` to ``(int(long * r), int(short * r))``;
    the image is rescaled keeping its aspect ratio as large as fits that scale (mmcv's
    ``rescale_size``), bilinear for the image and nearest for the label, with OpenCV.
    """
    low, high = ratio_range
    ratio = rng.random() * (high - low) + low
    scale = (int(img_scale[0] * ratio), int(img_scale[1] * ratio))
    height, width = keep_ratio_shape(image.shape[0], image.shape[1], scale)
    return (
        cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR),
        cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST),
    )


def random_crop(
    image: np.ndarray,
    label: np.ndarray,
    crop_size: tuple[int, int],
    cat_max_ratio: float,
    rng: np.random.Generator,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[np.ndarray, np.ndarray]:
    """mmseg's ``RandomCrop(crop_size, cat_max_ratio)``: a ``crop_size`` (h, w) window, or the whole side
    where the image is smaller.

    With ``cat_max_ratio < 1`` a window is redrawn while its label has fewer than two
    classes or one class covers ``cat_max_ratio`` or more of its non-ignored pixels; after
    ``CROP_TRIES`` rejected windows the next one is taken unchecked.
    """

    def draw() -> tuple[int, int]:
        top = int(rng.integers(0, max(image.shape[0] - crop_size[0], 0) + 1))
        left = int(rng.integers(0, max(image.shape[1] - crop_size[1], 0) + 1))
        return top, left

    def window(array: np.ndarray, corner: tuple[int, int]) -> np.ndarray:
        return array[corner[0] : corner[0] + crop_size[0], corner[1] : corner[1] + crop_size[1]]

    corner = draw()
    if cat_max_ratio < 1.0:
        for _ in range(CROP_TRIES):
            classes, counts = np.unique(window(label, corner), return_counts=True)
            counts = counts[classes != ignore_index]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            corner = draw()
    return window(image, corner), window(label, corner)


def _scale_and_clip(pixels: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """mmseg's ``convert``: ``pixels * alpha + beta`` in float32, clipped to [0, 255], truncated to uint8."""
    return np.clip(pixels.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(image: np.ndarray, spec: PipelineSpec, rng: np.random.Generator) -> np.ndarray:
    """mmseg's ``PhotoMetricDistortion`` on an (H, W, 3) uint8 image.

    Each step applies with probability 1/2: brightness (``+ U(-delta, delta)``), contrast
    (``* U(contrast_range)``) first or last (a coin picks), saturation (OpenCV 8-bit HSV,
    ``S * U(saturation_range)``) and hue (``(H + randint[-delta, delta)) % 180``); every step
    truncates to uint8. RGB input gives the same HSV as mmcv's ``bgr2hsv`` on the BGR image.
    """
    image = image.copy()
    if rng.integers(2):
        image = _scale_and_clip(image, beta=rng.uniform(-spec.brightness_delta, spec.brightness_delta))
    contrast_last = rng.integers(2) == 0
    if not contrast_last and rng.integers(2):
        image = _scale_and_clip(image, alpha=rng.uniform(*spec.contrast_range))
    if rng.integers(2):
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv[:, :, 1] = _scale_and_clip(hsv[:, :, 1], alpha=rng.uniform(*spec.saturation_range))
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.integers(2):
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        shift = int(rng.integers(-spec.hue_delta, spec.hue_delta))  # numpy's randint: high excluded, as in mmseg
        hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + shift) % 180
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if contrast_last and rng.integers(2):
        image = _scale_and_clip(image, alpha=rng.uniform(*spec.contrast_range))
    return image


def shortest_edge_resize(
    image: np.ndarray, label: np.ndarray, spec: PipelineSpec, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """detectron2's ``ResizeShortestEdge``: the short edge to one of ``min_size_train`` (``choice``) or an
    integer in its [first, last] (``range``), the long edge capped at ``max_size_train``; PIL bilinear for
    the image, nearest for the label."""
    if spec.min_size_train_sampling == "choice":
        short_edge = int(rng.choice(spec.min_size_train))
    else:
        short_edge = int(rng.integers(spec.min_size_train[0], spec.min_size_train[-1] + 1))
    size = list(shortest_edge_shape(image.shape[0], image.shape[1], short_edge, spec.max_size_train))
    resized = v2.functional.resize(Image.fromarray(image), size, interpolation=v2.InterpolationMode.BILINEAR)
    resized_label = v2.functional.resize(Image.fromarray(label), size, interpolation=v2.InterpolationMode.NEAREST)
    return np.array(resized), np.array(resized_label)


class TrainTransform:
    """One training sample of ``recipe``'s entry: ``(image, label, rng) -> (float32 (3, H, W), int64 (H, W))``.

    The image comes out normalized as the entry's model expects (``info.normalization``,
    in its channel order). ``mmseg`` samples come out at ``crop_size``; ``detectron2`` ones at
    their resized size, for :func:`segzoo.training.data.collate` to pad.
    """

    def __init__(self, recipe: Recipe) -> None:
        info = model_info(recipe.name)
        self.spec, self.crop_size = recipe.pipeline, recipe.crop_size
        self.test_pipeline, self.normalization = info.test_pipeline, info.normalization

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        spec = self.spec
        if spec.style == "mmseg":
            image, label = random_rescale(image, label, spec.img_scale, spec.ratio_range, rng)
            image, label = random_crop(image, label, self.crop_size, spec.cat_max_ratio, rng)
            if spec.photometric:  # per pixel, so it commutes with the flip mmseg applies before it
                image = photometric_distortion(image, spec, rng)
        else:
            image, label = shortest_edge_resize(image, label, spec, rng)
        pixels = normalize(image, self.test_pipeline, self.normalization)[0]
        target = torch.from_numpy(np.ascontiguousarray(label)).long()
        if rng.random() < spec.flip_prob:
            pixels, target = v2.functional.horizontal_flip(pixels), v2.functional.horizontal_flip(target)
        if spec.style == "mmseg":
            pixels, target = pad_to(pixels, target, self.crop_size, spec.pad_val, spec.seg_pad_val)
        return pixels, target


def pad_to(
    image: torch.Tensor,
    label: torch.Tensor,
    size: tuple[int, int],
    pad_val: float = 0.0,
    seg_pad_val: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """mmseg's ``Pad(size)``: (3, h, w) image and (h, w) label padded at the bottom and right to ``size``."""
    padding = [0, 0, size[1] - image.shape[-1], size[0] - image.shape[-2]]  # left, top, right, bottom
    if padding == [0, 0, 0, 0]:
        return image, label
    return (
        v2.functional.pad(image, padding, fill=pad_val),
        v2.functional.pad(label.unsqueeze(0), padding, fill=seg_pad_val)[0],
    )
