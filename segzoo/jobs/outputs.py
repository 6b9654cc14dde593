"""One image's outputs: the label image, the overlay, class probabilities and class areas, each written atomically.

The rendering functions return images and arrays (a page that shows them uses them as they are); the ``save_*``
functions write them so that a file is either whole or absent: into a temporary file in the same folder, then
renamed over the target (``os.replace``), so a job killed mid-write leaves no partial output to skip on resume.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segzoo.datasets import dataset_metadata
from segzoo.visualize import indexed_labels, render_overlay
from segzoo.zoo.records import ModelInfo

AREA_COLUMNS = ("image", "width", "height", "class_index", "class", "pixels", "fraction")


@dataclass(frozen=True)
class ClassMeta:
    """Class names and palette of a model's dataset (what the overlay's legend and the area table name)."""

    names: Sequence[str]
    palette: Sequence[tuple[int, int, int]]

    @classmethod
    def of(cls, info: ModelInfo) -> ClassMeta:
        return cls(*dataset_metadata(info.dataset))


def label_image(labels: np.ndarray, classes: ClassMeta) -> Image.Image:
    """The indexed PNG image of ``labels``: pixel values are class indices, colors the dataset's palette."""
    return indexed_labels(labels, classes.palette)


def overlay_image(image: Image.Image | np.ndarray, labels: np.ndarray, classes: ClassMeta) -> Image.Image:
    """``image`` with its classes colored in and a legend of the classes present."""
    rgb = image if isinstance(image, Image.Image) else Image.fromarray(image)
    return render_overlay(rgb, labels, classes.names, classes.palette)


def probabilities(scores: torch.Tensor, averaged: bool) -> np.ndarray:
    """``(C, H, W)`` float16 class probabilities from a prediction's scores: logits (softmax taken here) or, of
    an aug-test, the averaged probabilities already."""
    probs = scores.float() if averaged else scores.float().softmax(dim=0)
    return probs.to(torch.float16).numpy()


@dataclass(frozen=True)
class ClassArea:
    """Pixels of one class in one image, with the class's name and palette colour."""

    index: int
    name: str
    color: tuple[int, int, int]
    pixels: int
    fraction: float


def class_areas(labels: np.ndarray, classes: ClassMeta) -> list[ClassArea]:
    """The classes present in ``labels``, by class index, with their pixel counts and shares of the image."""
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=len(classes.names))
    return [
        ClassArea(int(c), classes.names[c].strip(), tuple(classes.palette[c]), int(counts[c]), counts[c] / labels.size)
        for c in np.flatnonzero(counts)
    ]


def area_rows(source: Path, labels: np.ndarray, classes: ClassMeta) -> list[list[str]]:
    """The area table's rows (:data:`AREA_COLUMNS`) of one image."""
    height, width = labels.shape
    return [
        [str(source), str(width), str(height), str(a.index), a.name, str(a.pixels), f"{a.fraction:.6f}"]
        for a in class_areas(labels, classes)
    ]


def write_atomically(target: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Run ``write`` on a temporary file beside ``target``, then rename it to ``target``: readers (and a resumed
    job) see the old file or the whole new one, never a part."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_png(image: Image.Image, target: Path) -> None:
    write_atomically(target, lambda file: image.save(file, format="PNG"))


def save_probabilities(probs: np.ndarray, classes: ClassMeta, target: Path) -> None:
    """``probs`` (``(C, H, W)`` float16) as ``probabilities`` in an uncompressed ``.npz`` (``np.load`` reads it
    without pickle), with the class names as ``classes``."""
    names = np.asarray([name.strip() for name in classes.names])
    write_atomically(target, lambda file: np.savez(file, probabilities=probs, classes=names))
