"""What the demo page does, without the page: load an entry with whatever weights there are, read an uploaded
image within the demo's limits, segment it and describe the result."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from segzoo.inference import load_image, predict
from segzoo.jobs.files import decoder_reason
from segzoo.jobs.outputs import ClassArea, ClassMeta, class_areas, label_image, overlay_image
from segzoo.optimize import optimize_for_inference
from segzoo.registry import create_model, model_info
from segzoo.weights.errors import WeightsError
from segzoo.zoo.records import ModelInfo

# The largest image the page takes: its overlay, label image and their PNGs are built at full size (a few dozen
# bytes per pixel in all), which the page must bound; `segzoo predict` takes larger ones.
MAX_PIXELS = 4096 * 4096

# Each precision the page offers, and what it means.
PRECISIONS = {
    "fp32": "the eager model in float32, as the paper's code computes",
    "fast": "segzoo.optimize_for_inference: norms folded, costly parts rewritten; float32, same labels",
    "bf16": "the fast path computing in bfloat16 (labels may differ where classes are close)",
}


def _in_precision(model: nn.Module, precision: str) -> nn.Module:
    """``model`` (eval mode, float32) as it runs in ``precision``; the eager model itself for fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one the page offers: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return model
    return optimize_for_inference(model, dtype=torch.bfloat16 if precision == "bf16" else torch.float32)


class DemoInputError(ValueError):
    """An upload the page cannot segment; the message names it and says what to do."""


@dataclass(frozen=True)
class LoadedWeights:
    """Which weights a model holds: the entry's published ones, a local file, or random ones (none available)."""

    kind: Literal["published", "local file", "random"]
    detail: str

    @property
    def markdown(self) -> str:
        """One paragraph for the page; random weights stand out."""
        if self.kind == "random":
            return f"⚠️ **Weights: RANDOM, the labels mean nothing.** {self.detail}"
        return f"**Weights:** {self.kind}: {self.detail}"


@dataclass(frozen=True)
class LoadedModel:
    """An entry's model (eval mode, float32, on the demo's device), its weights and the seconds loading took."""

    model: nn.Module
    weights: LoadedWeights
    seconds: float

    @property
    def info(self) -> ModelInfo:
        return self.model.info


def load_entry(
    name: str, checkpoint: str | Path | None = None, allow_unsafe_pickle: bool = False, device: str = "cpu"
) -> LoadedModel:
    """The entry ``name`` with ``checkpoint``'s weights, else the published ones, else random ones (saying why).

    A checkpoint that does not load is an error (the user named it); published weights that cannot be had
    (offline and not cached, a share page, a refused download) leave the model random, marked as such.
    """
    start = time.perf_counter()
    if checkpoint is not None:
        model = create_model(name, checkpoint_path=checkpoint, allow_unsafe_pickle=allow_unsafe_pickle)
        weights = LoadedWeights("local file", f"`{checkpoint}`")
    else:
        try:
            model = create_model(name, pretrained=True)  # a download shows its bar on the terminal
            weights = LoadedWeights("published", "the checkpoint released with the paper (cached or downloaded)")
        except WeightsError as err:
            model = create_model(name)
            weights = LoadedWeights(
                "random",
                f"No published weights could be loaded ({err}). Fetch them with `segzoo download {name}` "
                f"or start the page with `segzoo demo --model {name} --checkpoint FILE`.",
            )
    return LoadedModel(model.to(device), weights, time.perf_counter() - start)


class DemoModels:
    """The page's models: one entry at a time (a ViT-L alone takes over a gigabyte), in each precision asked for.

    ``checkpoints`` maps entry names to local files (``--checkpoint`` for ``--model``); other entries get their
    published weights or random ones. Safe to call from the server's worker threads.
    """

    def __init__(
        self, checkpoints: Mapping[str, str | Path], device: str = "cpu", allow_unsafe_pickle: bool = False
    ) -> None:
        self._checkpoints = {model_info(name).name: path for name, path in checkpoints.items()}
        self._device = device
        self._allow_unsafe_pickle = allow_unsafe_pickle
        self._lock = threading.RLock()
        self._loaded: LoadedModel | None = None
        self._variants: dict[str, nn.Module] = {}

    @property
    def device(self) -> str:
        return self._device

    def entry(self, name: str) -> LoadedModel:
        """The entry ``name`` loaded (in float32); loading it drops the previous entry."""
        name = model_info(name).name
        with self._lock:
            if self._loaded is None or self._loaded.info.name != name:
                self._loaded, self._variants = None, {}  # the old entry goes before the new one loads
                self._loaded = load_entry(name, self._checkpoints.get(name), self._allow_unsafe_pickle, self._device)
            return self._loaded

    def model(self, name: str, precision: str) -> nn.Module:
        """The entry ``name`` as it runs in ``precision``, built on first use."""
        with self._lock:  # the entry and its variants change together
            loaded = self.entry(name)
            if precision not in self._variants:
                self._variants[precision] = _in_precision(loaded.model, precision)
            return self._variants[precision]


def read_upload(path: str | Path, shown_name: str, info: ModelInfo, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The uploaded image as the entry's upstream reader reads it, once its header shows it fits the page.

    ``shown_name`` (the file's name on the user's machine) names it in errors.
    """
    try:
        with Image.open(path) as opened:  # reads the header only: the size is known before any pixel is decoded
            width, height = opened.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        reason = decoder_reason(err, path)
        raise DemoInputError(f"{shown_name} is not an image ({reason}); drop a PNG, JPEG, WebP, BMP or TIFF") from None
    if width * height > max_pixels:
        side = math.isqrt(max_pixels)
        raise DemoInputError(
            f"{shown_name} is {width}x{height} = {width * height:,} pixels; the page takes at most {max_pixels:,} "
            f"(as many as {side}x{side}): resize it, or segment it with `segzoo predict`"
        )
    try:
        return load_image(path, info.test_pipeline)
    except (OSError, SyntaxError, ValueError) as err:  # a header that reads and pixels that do not
        raise DemoInputError(f"{shown_name} cannot be decoded ({err}); save it again as PNG or JPEG") from None


@dataclass(frozen=True)
class Segmentation:
    """What the page shows for one image: the overlay with its legend, the indexed label image, the classes
    present (largest first) and the seconds the model took."""

    overlay: Image.Image
    labels: Image.Image
    areas: tuple[ClassArea, ...]
    seconds: float


def segment(model: nn.Module, image: Image.Image) -> Segmentation:
    """Segment ``image`` with ``model`` as the entry's test pipeline does, timing the model alone."""
    info = model.info
    start = time.perf_counter()
    labels = predict(model, image).labels
    seconds = time.perf_counter() - start
    classes = ClassMeta.of(info)
    areas = sorted(class_areas(labels, classes), key=lambda area: -area.pixels)
    return Segmentation(overlay_image(image, labels, classes), label_image(labels, classes), tuple(areas), seconds)


def card_markdown(loaded: LoadedModel) -> str:
    """The entry's summary for the page, from its registry record, with the weights it holds."""
    info = loaded.info
    split = {"val": "validation set", "test": "test set"}[info.metrics_split]
    reported = f"{info.metrics_text} ({split})" if info.metrics else "none for these weights"
    return "\n".join(
        [
            f"### {info.name}",
            info.summary,
            "",
            f"- **Paper:** [{info.paper.title}](https://arxiv.org/abs/{info.paper.arxiv_id}) ({info.paper.venue})",
            f"- **Reported:** {reported}",
            f"- **Dataset:** {info.dataset}, {info.num_classes} classes; test: {info.test_pipeline.mode} inference",
            f"- **License:** {info.license}; everything segzoo records about it: `segzoo info {info.name}`",
            "",
            loaded.weights.markdown,
        ]
    )
