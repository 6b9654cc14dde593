"""``segzoo.predict``: label maps for any images, the way the entry's paper tested."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from segzoo.inference.graphs import Forward, forward_for
from segzoo.inference.modes import slide_logits
from segzoo.inference.pipeline import check_aspect_ratio, load_image, preprocess
from segzoo.inference.rescale import View, rescaled_labels, rescaled_scores
from segzoo.optimize import EvalOnly, compute_dtype, optimize_for_inference
from segzoo.registry import create_model
from segzoo.segmentors import EncoderDecoder
from segzoo.zoo.records import InferencePipeline, ModelInfo

ImageLike = str | Path | Image.Image | np.ndarray | torch.Tensor
Mode = Literal["whole", "slide"]
Amp = Literal["bf16", "fp16"]
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
Precision = Literal["fp32", "bf16"]
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}
_ACCEPTED = (
    "a path, a PIL image, an (H, W, 3) uint8 RGB array, a (3, H, W) or (N, 3, H, W) tensor of 0-255 RGB values, "
    "or a list of them"
)


@dataclass(frozen=True)
class Prediction:
    """One image's result at its original size.

    ``scores`` (only when asked for) is ``(num_classes, H, W)``: the logits,
    or with ``aug_test`` the averaged class probabilities that mmseg's aug-test
    takes the argmax of.
    """

    labels: np.ndarray
    scores: torch.Tensor | None = None


@dataclass(frozen=True)
class PreparedImage:
    """One image's plain-test model input, computed ahead of the forward (in a DataLoader worker).

    ``size`` is the image's own ``(H, W)``, the size its labels come back at; ``pixels`` the ``(1, 3, h, w)``
    float32 input :func:`prepare_image` computed, on the CPU.
    """

    size: tuple[int, int]
    pixels: torch.Tensor


def _checked_uint8(array: np.ndarray, what: str) -> np.ndarray:
    """``array`` as uint8 if every value is a whole number in [0, 255]; a clear error otherwise."""
    if array.dtype == np.uint8:
        return array
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(f"{what} has dtype {array.dtype}; pass uint8 RGB values in [0, 255]")
    low, high = float(array.min()), float(array.max())
    if not (0 <= low and high <= 255 and np.array_equal(array, np.round(array))):
        hint = " (0-1 values? multiply by 255)" if 0 <= low and high <= 1 else ""
        raise ValueError(
            f"{what} has dtype {array.dtype} with values in [{low:g}, {high:g}]{hint}; images are 0-255 RGB "
            f"values: pass uint8, e.g. np.clip(x, 0, 255).round().astype(np.uint8)"
        )
    return array.astype(np.uint8)


def _checked_array(array: np.ndarray, what: str) -> np.ndarray:
    """An (H, W, 3) array, not empty, as uint8."""
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(
            f"{what} has shape {array.shape}; pass (H, W, 3) RGB (grayscale: "
            f"np.stack([a] * 3, axis=-1); RGBA: a[..., :3])"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{what} is empty ({array.shape[1]}x{array.shape[0]} pixels)")
    return _checked_uint8(array, what)


def _as_arrays(image: ImageLike, what: str, pipeline: InferencePipeline | None = None) -> list[np.ndarray]:
    """(H, W, 3) uint8 RGB arrays for one input (a batch tensor gives several); clear errors for anything else."""
    if image is None:
        raise TypeError(f"{what} is None; pass {_ACCEPTED}")
    if isinstance(image, (str, Path)):
        image = load_image(image, pipeline)
    if isinstance(image, Image.Image):
        return [_checked_array(np.asarray(image.convert("RGB")), what)]
    if isinstance(image, np.ndarray):
        return [_checked_array(image, what)]
    if torch.is_tensor(image):
        batch = image.unsqueeze(0) if image.ndim == 3 else image
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"{what} is a tensor of shape {tuple(image.shape)}; pass (3, H, W) or (N, 3, H, W) RGB")
        batch = batch.detach().cpu()
        if batch.dtype in (torch.float16, torch.bfloat16):
            batch = batch.float()
        return [_checked_array(array, what) for array in batch.permute(0, 2, 3, 1).numpy()]
    raise TypeError(f"{what} is a {type(image).__name__}; pass {_ACCEPTED}")


def _is_single(images: ImageLike | Sequence[ImageLike]) -> bool:
    if torch.is_tensor(images):
        return images.ndim == 3
    return not isinstance(images, (list, tuple))


def _sized_error(what: str, size: tuple[int, int], err: ValueError) -> ValueError:
    """``err`` naming the image (``what``) and its size: the message every refused image gets."""
    return ValueError(f"{what} ({size[1]}x{size[0]} pixels): {err}")


def prepare_image(image: np.ndarray, info: ModelInfo, what: str = "image") -> PreparedImage:
    """The plain test's model input of an ``(H, W, 3)`` uint8 RGB image, on the CPU: the resize and normalization
    :func:`predict` does before the forward, split off so that a DataLoader worker can do it ahead."""
    size = image.shape[:2]
    try:
        pixels = preprocess(image, info.test_pipeline, info.normalization)
    except ValueError as err:  # too elongated for the entry's resize
        raise _sized_error(what, size, err) from err
    return PreparedImage(size, pixels)


def model_for_precision(model: EncoderDecoder, precision: Precision) -> EncoderDecoder:
    """``model`` computing in ``precision``: an fp32 model as it is, a model already optimized for that dtype as
    it is, an eager model optimized for it (a copy: ``model`` is left as it is); an error for a fast model of
    another dtype."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if compute_dtype(model) == dtype:
        return model
    if isinstance(model, EvalOnly):
        raise ValueError(
            f"this model was optimized for inference in {compute_dtype(model)}; for precision={precision!r} pass "
            f"the eager model (segzoo.create_model) or optimize it with dtype={dtype}"
        )
    return optimize_for_inference(model, dtype=dtype)


def _run_views(
    model: EncoderDecoder,
    images: Sequence[np.ndarray] | PreparedImage,
    views: list[tuple[float, bool]],
    mode: Mode,
    amp: Amp | None,
    channels_last: bool,
    cuda_graphs: bool | None,
    what: str,
) -> Iterator[View]:
    """The ``(N, C, h, w)`` logits of each ``(ratio, flip)`` view of same-sized images, one view at a time
    (of a prepared image, its one plain view), the forward replayed from CUDA graphs where ``cuda_graphs`` says
    (:func:`segzoo.inference.graphs.use_cuda_graphs`).

    An image the pipeline or the model cannot take raises a ValueError that names it (``what``) and its size.
    """
    info = model.require_info()
    pipeline = info.test_pipeline
    crop = pipeline.crop_size or info.crop_size
    stride = pipeline.stride or (crop[0] * 2 // 3, crop[1] * 2 // 3)
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=_AMP_DTYPES[amp]) if amp else contextlib.nullcontext()
    size = images.size if isinstance(images, PreparedImage) else images[0].shape[:2]
    forward: Forward = forward_for(model, cuda_graphs, 1 if isinstance(images, PreparedImage) else len(images))
    try:
        check_aspect_ratio(*size, pipeline, tuple(ratio for ratio, _ in views))
        for ratio, flip in views:
            if isinstance(images, PreparedImage):
                x = images.pixels.to(device, non_blocking=True)
            else:
                x = torch.cat(
                    [preprocess(image, pipeline, info.normalization, ratio, flip, device) for image in images]
                )
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                if mode == "whole":
                    logits = forward(x)
                else:
                    logits = slide_logits(forward, x, model.num_classes, crop, stride, pipeline.slide_windows)
            # The final resize runs on contiguous float32 logits, as upstream's does; a fast-path model equals its
            # eager model to float32 rounding only, so its logits keep their memory format (saves a full-size copy)
            logits = logits.float()
            yield (logits if isinstance(model, EvalOnly) else logits.contiguous(), flip)
            del x, logits  # before the next view's forward: a consumer that keeps a running sum holds no view
    except ValueError as err:
        raise _sized_error(what, size, err) from err


def _view_logits(
    model: EncoderDecoder,
    images: Sequence[np.ndarray] | PreparedImage,
    mode: Mode | None,
    aug_test: bool,
    amp: Amp | None,
    channels_last: bool,
    cuda_graphs: bool | None,
    what: str = "image",
) -> tuple[Iterator[View], bool]:
    """Each test view's ``(N, C, h, w)`` logits at the model's input size for same-sized images, computed as
    they are consumed (an aug-test need not hold them all), and the ``align_corners`` of their final resize to
    the images' size; ``what`` names the images in errors."""
    pipeline = model.require_info().test_pipeline
    mode = mode or pipeline.mode
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    flips = (False, True) if pipeline.aug_flip else (False,)
    views = [(r, f) for r in pipeline.aug_ratios for f in flips] if aug_test else [(1.0, False)]
    align_corners = model.align_corners if pipeline.rescale_align_corners is None else pipeline.rescale_align_corners
    return _run_views(model, images, views, mode, amp, channels_last, cuda_graphs, what), align_corners


def _pixel_arrays(pixels: torch.Tensor) -> list[np.ndarray]:
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"pixels must be (N, 3, H, W) 0-255 RGB values, got {tuple(pixels.shape)}")
    return _as_arrays(pixels, "pixels")


@torch.inference_mode()
def infer_scores(
    model: EncoderDecoder,
    pixels: torch.Tensor,
    mode: Mode | None = None,
    aug_test: bool = False,
    amp: Amp | None = None,
    channels_last: bool = False,
    cuda_graphs: bool | None = None,
) -> torch.Tensor:
    """``(N, C, H, W)`` scores at the pixels' own size for a batch of same-sized ``(N, 3, H, W)`` 0-255 RGB images.

    Full-size scores take ``C x H x W`` floats per image; for labels alone use :func:`infer_labels`.
    ``cuda_graphs`` as in :func:`predict`, where batch 1 means ``N == 1``.
    """
    arrays = _pixel_arrays(pixels)
    views, align_corners = _view_logits(model, arrays, mode, aug_test, amp, channels_last, cuda_graphs, "pixels")
    return rescaled_scores(views, tuple(pixels.shape[2:]), align_corners, averaged=aug_test).to(pixels.device)


@torch.inference_mode()
def infer_labels(
    model: EncoderDecoder,
    pixels: torch.Tensor,
    mode: Mode | None = None,
    aug_test: bool = False,
    amp: Amp | None = None,
    channels_last: bool = False,
    cuda_graphs: bool | None = None,
) -> torch.Tensor:
    """``(N, H, W)`` int64 labels, equal to ``infer_scores(...).argmax(1)``, in bounded memory (bands of rows).
    ``cuda_graphs`` as in :func:`infer_scores`."""
    arrays = _pixel_arrays(pixels)
    views, align_corners = _view_logits(model, arrays, mode, aug_test, amp, channels_last, cuda_graphs, "pixels")
    return rescaled_labels(views, tuple(pixels.shape[2:]), align_corners, averaged=aug_test).to(pixels.device)


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
    precision: Precision = "fp32",
    cuda_graphs: bool | None = None,
) -> Prediction | list[Prediction]:
    """Segment images as the entry's upstream test pipeline does; results are at each image's own size.

    ``images``: a path, a PIL image (any mode, converted to RGB), an
    ``(H, W, 3)`` uint8 RGB array, a ``(3, H, W)`` tensor, or a list of them,
    or an ``(N, 3, H, W)`` tensor; arrays and tensors of another numeric dtype
    are accepted when every value is a whole number in [0, 255] (a 0-1 float
    image is rejected, not guessed at). A single image gives a single
    :class:`Prediction`. Images are resized as uint8, bit-identical to the
    upstream pipeline's input. ``mode`` overrides the entry's inference mode;
    ``aug_test`` runs mmseg's multi-scale + flip test; ``amp``
    (``"bf16"``/``"fp16"``) runs under autocast; ``precision="bf16"`` runs the
    bf16 fast path (:func:`segzoo.optimize_for_inference` with
    ``dtype=torch.bfloat16``; built once per call from an eager model, so pass a
    model optimized that way for many calls), the final resize and argmax in
    float32; the default ``"fp32"`` runs the model as it is. Labels are computed from the
    logits a band of rows at a time, so memory does not grow with classes x
    image pixels; ``return_scores=True`` also builds the full ``(C, H, W)``
    scores. A name builds the pretrained model; ``device`` moves the model
    there (default: where it is). On a GPU the forward is replayed from a
    CUDA graph per input size once that size has been run once (batch 1 is
    launch-bound there; :mod:`segzoo.inference.graphs`); ``cuda_graphs=False``
    runs it eagerly, ``True`` insists (an error off the GPU).
    """
    if isinstance(model_or_name, str):
        model_or_name = create_model(model_or_name, pretrained=True)
    model = model_or_name.eval()
    if device is not None:
        model.to(device)
    model = model_for_precision(model, precision)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    pipeline = model.require_info().test_pipeline
    single = _is_single(images)
    inputs = [images] if single or torch.is_tensor(images) else list(images)
    results = []
    for i, image in enumerate(inputs):
        what = "image" if single or torch.is_tensor(images) else f"image {i}"
        if isinstance(image, (str, Path)):
            what = f"{what} {image}"
        for array in _as_arrays(image, what, pipeline):
            views = _view_logits(model, [array], mode, aug_test, amp, channels_last, cuda_graphs, what)
            results.append(_prediction(model, views, array.shape[:2], aug_test, return_scores))
    return results[0] if single else results


def _prediction(
    model: EncoderDecoder,
    views: tuple[Iterator[View], bool],
    size: tuple[int, int],
    aug_test: bool,
    return_scores: bool,
) -> Prediction:
    """One image's :class:`Prediction` at ``size`` from its views' logits and their ``align_corners``."""
    views, align_corners = views
    label_dtype = torch.uint8 if model.num_classes <= 256 else torch.int64
    if return_scores:
        scores = rescaled_scores(views, size, align_corners, averaged=aug_test)[0]
        return Prediction(scores.argmax(dim=0).to(label_dtype).cpu().numpy(), scores.cpu())
    labels = rescaled_labels(views, size, align_corners, averaged=aug_test, dtype=label_dtype)[0]
    return Prediction(labels.cpu().numpy())


@torch.inference_mode()
def predict_prepared(
    model: EncoderDecoder,
    prepared: PreparedImage,
    mode: Mode | None = None,
    amp: Amp | None = None,
    channels_last: bool = False,
    return_scores: bool = False,
    what: str = "image",
    cuda_graphs: bool | None = None,
) -> Prediction:
    """What ``predict(model, image, ...)`` returns for the image :func:`prepare_image` prepared (the plain test;
    the aug-test's views are built from the image itself). The model is used where it is, in eval mode."""
    model.eval()
    views = _view_logits(model, prepared, mode, False, amp, channels_last, cuda_graphs, what)
    return _prediction(model, views, prepared.size, False, return_scores)
