"""``segzoo.predict``: label maps for any images, the way the entry's paper tested."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from segzoo.inference.modes import slide_logits
from segzoo.inference.pipeline import load_image, preprocess, to_pixels
from segzoo.segmentors import EncoderDecoder

ImageLike = Union[str, Path, Image.Image, np.ndarray, torch.Tensor]
Mode = Literal["whole", "slide"]
Amp = Literal["bf16", "fp16"]
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Prediction:
    """One image's result at its original size.

    ``scores`` (only when asked for) is ``(num_classes, H, W)``: the logits,
    or with ``aug_test`` the averaged class probabilities that mmseg's aug-test
    takes the argmax of.
    """

    labels: np.ndarray
    scores: torch.Tensor | None = None


def _as_pixels(image: ImageLike) -> Iterator[torch.Tensor]:
    """``(1, 3, H, W)`` float 0-255 RGB pixels for each image in ``image``."""
    if torch.is_tensor(image):
        batch = image.unsqueeze(0) if image.ndim == 3 else image
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"image tensors must be (3, H, W) or (N, 3, H, W) RGB in [0, 255], got {tuple(image.shape)}")
        yield from (x.unsqueeze(0).float() for x in batch)
    else:
        yield to_pixels(load_image(image))


def _is_single(images: ImageLike | Sequence[ImageLike]) -> bool:
    if torch.is_tensor(images):
        return images.ndim == 3
    return not isinstance(images, (list, tuple))


def infer_scores(
    model: EncoderDecoder,
    pixels: torch.Tensor,
    mode: Mode | None = None,
    aug_test: bool = False,
    amp: Amp | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """``(N, C, H, W)`` scores at the pixels' own size for a batch of same-sized ``(N, 3, H, W)`` 0-255 images."""
    info = model.require_info()
    pipeline = info.test_pipeline
    mode = mode or pipeline.mode
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    crop = pipeline.crop_size or info.crop_size
    stride = pipeline.stride or (crop[0] * 2 // 3, crop[1] * 2 // 3)
    flips = (False, True) if pipeline.aug_flip else (False,)
    views = [(r, f) for r in pipeline.aug_ratios for f in flips] if aug_test else [(1.0, False)]
    autocast = (
        torch.autocast(pixels.device.type, dtype=_AMP_DTYPES[amp]) if amp else contextlib.nullcontext()
    )
    total = None
    for ratio, flip in views:
        x = preprocess(pixels, pipeline, info.normalization, ratio, flip)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            logits = model(x) if mode == "whole" else slide_logits(model, x, model.num_classes, crop, stride)
        logits = F.interpolate(logits.float(), size=pixels.shape[2:], mode="bilinear", align_corners=model.align_corners)
        if not aug_test:
            return logits
        probs = logits.softmax(dim=1)
        probs = probs.flip(3) if flip else probs
        total = probs if total is None else total + probs
    return total / len(views)


@torch.inference_mode()
def predict(
    model_or_name: EncoderDecoder | str,
    images: ImageLike | Sequence[ImageLike],
    mode: Mode | None = None,
    aug_test: bool = False,
    device: str | torch.device | None = None,
    amp: Amp | None = None,
    channels_last: bool = False,
    return_scores: bool = False,
) -> Prediction | list[Prediction]:
    """Segment images as the entry's upstream test pipeline does; results are at each image's own size.

    ``images``: a path, PIL image, ``(H, W, 3)`` uint8 RGB array or ``(3, H, W)``
    tensor of 0-255 RGB values, or a list of them (or an ``(N, 3, H, W)``
    tensor); a single image gives a single :class:`Prediction`. ``mode``
    overrides the entry's inference mode; ``aug_test`` runs mmseg's multi-scale
    + flip test; ``amp`` (``"bf16"``/``"fp16"``) runs under autocast. A name
    builds the pretrained model; ``device`` moves the model there (default: where
    it is).
    """
    if isinstance(model_or_name, str):
        from segzoo.registry import create_model

        model_or_name = create_model(model_or_name, pretrained=True)
    model = model_or_name.eval()
    if device is not None:
        model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    target = next(model.parameters()).device
    results = []
    for image in [images] if _is_single(images) or torch.is_tensor(images) else images:
        for pixels in _as_pixels(image):
            scores = infer_scores(model, pixels.to(target), mode, aug_test, amp, channels_last)[0]
            labels = scores.argmax(dim=0).to(torch.uint8 if model.num_classes <= 256 else torch.int64).cpu().numpy()
            results.append(Prediction(labels, scores.cpu() if return_scores else None))
    return results[0] if _is_single(images) else results
