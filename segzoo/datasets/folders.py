"""Read-only readers of evaluation datasets laid out as their official downloads unpack.

Each reader pairs images with labels by file name and checks the pairing up front, so that a
misplaced or unprepared dataset fails at once with a message saying what to do, not midway
through an evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from segzoo.datasets import dataset_metadata
from segzoo.inference import load_image
from segzoo.zoo.records import InferencePipeline

IGNORE_INDEX = 255
_MAX_LISTED = 3  # missing files named in an error message
MAX_LISTED_FILES = 20  # bad files of a user's dataset named in an error message


class DatasetError(ValueError):
    """A dataset folder without the expected layout; the message says what was expected where."""


@dataclass(frozen=True)
class Sample:
    """One image and its label file; ``name`` is the image's stem without dataset suffixes.

    ``annotations`` maps other official annotation kinds of the sample to where
    their files belong (Cityscapes: ``labelIds``, ``instanceIds``); they may be
    absent on disk until an evaluation asks for them.
    """

    name: str
    image: Path
    label: Path
    annotations: Mapping[str, Path] = field(default_factory=dict)


class SegmentationFolder(torch.utils.data.Dataset):
    """Image/label pairs of one split, in name order; labels use 255 for ignored pixels.

    ``annotations_fix`` tells the user how to get the samples' other annotation
    files when an evaluation needs them (see :meth:`annotation_files`).
    """

    ignore_index = IGNORE_INDEX
    pipeline: InferencePipeline | None = None  # whose upstream image reader to follow (see open_dataset)
    label_value_fix = ""  # what to do about a label value outside the classes

    def __init__(
        self,
        dataset: str,
        samples: Sequence[Sample],
        split: str = "val",
        reduce_zero_label: bool = False,
        annotations_fix: str = "",
    ) -> None:
        self.dataset = dataset
        self.split = split
        self.classes, self.palette = dataset_metadata(dataset)
        self.samples = sorted(samples, key=lambda s: s.name)
        self.reduce_zero_label = reduce_zero_label
        self.annotations_fix = annotations_fix

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """``{"name", "image": (H, W, 3) uint8 RGB, "label": (H, W) uint8}`` of sample ``i``."""
        sample = self.samples[i]
        image = np.array(load_image(sample.image, self.pipeline))
        label = _read_label(sample.label)
        self._check_label_values(label, sample.label)
        if self.reduce_zero_label:
            label = _reduce_zero_label(label)
        if image.shape[:2] != label.shape:
            raise DatasetError(
                f"image {sample.image} is {image.shape[1]}x{image.shape[0]} but its label "
                f"{sample.label} is {label.shape[1]}x{label.shape[0]}"
            )
        return {"name": sample.name, "image": image, "label": label, "annotations": sample.annotations}

    def _check_label_values(self, label: np.ndarray, path: Path) -> None:
        """Refuse a label file holding a value that is neither a class nor ignored, named as the file stores it."""
        classes = len(self.classes)
        highest = classes if self.reduce_zero_label else classes - 1  # reduce_zero_label: 1..K are the classes
        outside = np.unique(label[(label > highest) & (label != IGNORE_INDEX)])
        if not outside.size:
            return
        values = ", ".join(map(str, outside[:_MAX_LISTED])) + (" ..." if outside.size > _MAX_LISTED else "")
        if self.reduce_zero_label:
            meaning = f"1..{classes} for its {classes} classes, 0 and {IGNORE_INDEX} for ignored pixels"
        else:
            meaning = f"0..{classes - 1} for its {classes} classes, {IGNORE_INDEX} for ignored pixels"
        raise DatasetError(
            f"label {path} has class index {values}, but the dataset has {classes} classes: "
            f"{self.dataset} labels hold {meaning}{self.label_value_fix}"
        )

    def __repr__(self) -> str:
        return f"SegmentationFolder({self.dataset!r}, {self.split!r}, {len(self)} samples)"

    def annotation_files(self, kind: str) -> list[Path]:
        """The ``kind`` annotation file of every sample, in order; all must exist.

        A DatasetError names the dataset's known kinds when it has no ``kind``,
        and a few missing files with what to unzip when some are absent.
        """
        known = sorted({k for sample in self.samples for k in sample.annotations})
        if kind not in known:
            raise DatasetError(f"{self.dataset} samples have no {kind!r} annotation files; known: {known}")
        files = [sample.annotations[kind] for sample in self.samples]
        missing = [path for path in files if not path.is_file()]
        if missing:
            raise DatasetError(
                f"{len(missing)} of {len(files)} {self.dataset} {self.split} samples have no {kind} file; "
                f"missing {_listing(missing)}; {self.annotations_fix}"
            )
        return files


def open_dataset(
    dataset: str, root: str | Path, split: str = "val", pipeline: InferencePipeline | None = None
) -> SegmentationFolder:
    """The ``split`` ("val" or "train") of ``dataset`` ("ADE20K", "Cityscapes", "COCO-Stuff54") under ``root``.

    ``pipeline`` (a model's ``info.test_pipeline``) makes images read as that
    model's upstream reader did (EXIF orientation; see :func:`segzoo.inference.load_image`).
    """
    try:
        reader = _READERS[dataset]
    except KeyError:
        raise DatasetError(f"no folder reader for dataset {dataset!r}; known: {sorted(_READERS)}") from None
    if split not in ("val", "train"):
        raise DatasetError(f"unknown split {split!r} of {dataset}; expected 'val' or 'train'")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{dataset} root {root} is not a folder")
    folder = reader(root, split)
    folder.pipeline = pipeline
    return folder


def _ade20k(root: Path, split: str) -> SegmentationFolder:
    """ADEChallengeData2016: images/<split>/*.jpg with annotations/<split>/*.png (0 = other)."""
    if (root / "ADEChallengeData2016").is_dir():
        root = root / "ADEChallengeData2016"
    folder = {"val": "validation", "train": "training"}[split]
    fix = f"pass the unzipped ADEChallengeData2016 folder, or the folder that holds it (got {root})"
    samples = _pair(root / "images" / folder, "*.jpg", root / "annotations" / folder, ".png", fix, fix)
    return SegmentationFolder("ADE20K", samples, split, reduce_zero_label=True)


def _cityscapes(root: Path, split: str) -> SegmentationFolder:
    """leftImg8bit/<split>/<city>/*_leftImg8bit.png with gtFine/<split>/<city>/*_gtFine_labelTrainIds.png.

    Each sample also points at its official ``*_gtFine_labelIds.png`` and
    ``*_gtFine_instanceIds.png``, which the official evaluation reads.
    """
    samples = _pair(
        root / "leftImg8bit" / split,
        "*/*_leftImg8bit.png",
        root / "gtFine" / split,
        "_gtFine_labelTrainIds.png",
        f"unzip leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip into {root}",
        f"unzip gtFine_trainvaltest.zip into {root}, then make the labelTrainIds files from its "
        f"labelIds with `segzoo prepare cityscapes {root}`",
    )
    official = [
        replace(
            sample,
            annotations={
                kind: sample.label.with_name(sample.label.name.replace("_labelTrainIds.", f"_{kind}."))
                for kind in ("labelIds", "instanceIds")
            },
        )
        for sample in samples
    ]
    return SegmentationFolder(
        "Cityscapes",
        official,
        split,
        annotations_fix=f"unzip gtFine_trainvaltest.zip into {root}: the official Cityscapes evaluation reads "
        f"its *_gtFine_labelIds.png and *_gtFine_instanceIds.png",
    )


def _coco_stuff54(root: Path, split: str) -> SegmentationFolder:
    """val2017/*.jpg with panoptic_stuff_val2017/*.png (likewise for train2017), as detectron2 lays them out."""
    year_split = f"{split}2017"
    samples = _pair(
        root / year_split,
        "*.jpg",
        root / f"panoptic_stuff_{year_split}",
        ".png",
        f"unzip COCO's {year_split}.zip into {root}",
        f"unzip COCO's panoptic annotations into {root} (annotations/panoptic_{year_split}.json "
        f"and panoptic_{year_split}/), then make the stuff labels with `segzoo prepare coco-stuff54 {root}`",
    )
    return SegmentationFolder("COCO-Stuff54", samples, split)


_READERS: dict[str, Callable[[Path, str], SegmentationFolder]] = {
    "ADE20K": _ade20k,
    "Cityscapes": _cityscapes,
    "COCO-Stuff54": _coco_stuff54,
}


def _pair(
    image_dir: Path, image_glob: str, label_dir: Path, label_suffix: str, image_fix: str, label_fix: str
) -> list[Sample]:
    """Samples pairing ``image_dir/<key><image suffix>`` with ``label_dir/<key><label_suffix>``.

    ``image_glob`` is ``[subfolders/]*<image suffix>``; every image needs its label and every
    label its image, else a DatasetError names a few of the missing files.
    """
    image_suffix = image_glob.rsplit("*", 1)[1]
    label_glob = image_glob.rsplit("*", 1)[0] + "*" + label_suffix
    if not image_dir.is_dir():
        raise DatasetError(f"no image folder {image_dir}; {image_fix}")
    if not label_dir.is_dir():
        raise DatasetError(f"no label folder {label_dir}; {label_fix}")
    images = _by_key(image_dir, image_glob, image_suffix)
    labels = _by_key(label_dir, label_glob, label_suffix)
    if not images:
        raise DatasetError(f"no images {image_dir / image_glob}; {image_fix}")
    no_label = sorted(images.keys() - labels.keys())
    if no_label:
        raise DatasetError(
            f"{len(no_label)} of {len(images)} images have no label; missing "
            f"{_listing([label_dir / f'{key}{label_suffix}' for key in no_label])}; {label_fix}"
        )
    no_image = sorted(labels.keys() - images.keys())
    if no_image:
        raise DatasetError(
            f"{len(no_image)} labels in {label_dir} have no image; missing "
            f"{_listing([image_dir / f'{key}{image_suffix}' for key in no_image])}"
        )
    return [Sample(Path(key).name, images[key], labels[key]) for key in images]


def _by_key(folder: Path, pattern: str, suffix: str) -> dict[str, Path]:
    """Files matching ``pattern`` under ``folder``, keyed by relative path less ``suffix``."""
    return {p.relative_to(folder).as_posix()[: -len(suffix)]: p for p in folder.glob(pattern)}


def _listing(paths: Sequence[Path], limit: int = _MAX_LISTED) -> str:
    """The first ``limit`` of ``paths``, and how many more there are."""
    shown = ", ".join(str(path) for path in paths[:limit])
    more = len(paths) - limit
    return shown + (f" and {more} more" if more > 0 else "")


def _read_label(path: Path) -> np.ndarray:
    """The (H, W) uint8 class-index array of a single-channel label PNG."""
    with Image.open(path) as img:
        mode = img.mode
        label = np.array(img)
    if label.ndim != 2 or label.dtype != np.uint8:
        raise DatasetError(f"label {path} is a {mode!r} image; expected single-channel 8-bit class indices")
    return label


def _reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """mmseg's ``reduce_zero_label``: 0 becomes ignored and every other class moves down by one."""
    label = label.copy()
    label[label == 0] = IGNORE_INDEX
    label -= 1
    label[label == IGNORE_INDEX - 1] = IGNORE_INDEX
    return label


CUSTOM_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CUSTOM_LAYOUT = (
    "expected DIR/images/{train,val}/*.jpg|*.png with DIR/labels/{train,val}/*.png of the same stem: "
    "single-channel PNGs (8-bit grey or palette) of class indices 0..K-1, 255 for ignored pixels"
)


class CustomFolder(SegmentationFolder):
    """A user's dataset (see :func:`open_custom_dataset`): classes ``class_0`` ... ``class_{K-1}``,
    every label value checked against ``num_classes`` when a sample is read (a file may change after
    :func:`segzoo.datasets.check.check_custom_data` read it)."""

    label_value_fix = "; pass the right --num-classes or fix the label"

    def __init__(self, root: Path, samples: Sequence[Sample], split: str, num_classes: int) -> None:
        # SegmentationFolder's own __init__ looks the dataset's classes up by name; a custom one has none
        self.dataset, self.split, self.root, self.num_classes = "custom", split, root, num_classes
        self.classes = tuple(f"class_{i}" for i in range(num_classes))
        rng = np.random.default_rng(num_classes)
        self.palette = tuple(tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(num_classes))
        self.samples = sorted(samples, key=lambda s: s.name)
        self.reduce_zero_label, self.annotations_fix = False, ""

    def __repr__(self) -> str:
        return f"CustomFolder({str(self.root)!r}, {self.split!r}, {len(self)} samples, {self.num_classes} classes)"


def open_custom_dataset(
    root: str | Path, split: str, num_classes: int, pipeline: InferencePipeline | None = None
) -> CustomFolder:
    """The ``split`` ("train" or "val") of a user's dataset laid out as ``CUSTOM_LAYOUT`` says.

    Images and labels pair by file stem; a DatasetError names the folder or the unpaired
    files. Only file names are looked at: :func:`segzoo.datasets.check.check_custom_data`
    reads every file before training or evaluation starts. ``pipeline`` as in
    :func:`open_dataset`.
    """
    root = Path(root).expanduser()
    if split not in ("val", "train"):
        raise DatasetError(f"unknown split {split!r} of {root}; expected 'val' or 'train'")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or not 1 <= num_classes <= IGNORE_INDEX:
        raise DatasetError(f"num_classes must be an integer from 1 to {IGNORE_INDEX}, got {num_classes!r}")
    image_dir, label_dir = root / "images" / split, root / "labels" / split
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise DatasetError(f"no folder {folder}; {CUSTOM_LAYOUT}")
    images: dict[str, Path] = {}
    for path in sorted(image_dir.iterdir()):
        if path.suffix.lower() in CUSTOM_IMAGE_SUFFIXES:
            if path.stem in images:
                raise DatasetError(f"{images[path.stem]} and {path} share the stem {path.stem!r}; keep one")
            images[path.stem] = path
    labels = {path.stem: path for path in label_dir.glob("*.png")}
    if not images:
        raise DatasetError(f"no images in {image_dir}; {CUSTOM_LAYOUT}")
    unpaired = []
    no_label = sorted(images.keys() - labels.keys())
    if no_label:
        unpaired.append(
            f"{len(no_label)} of {len(images)} images in {image_dir} have no label <stem>.png in {label_dir}: "
            f"{_listing([images[stem] for stem in no_label], MAX_LISTED_FILES)}"
        )
    no_image = sorted(labels.keys() - images.keys())
    if no_image:
        unpaired.append(
            f"{len(no_image)} labels in {label_dir} have no image of the same stem in {image_dir}: "
            f"{_listing([labels[stem] for stem in no_image], MAX_LISTED_FILES)}"
        )
    if unpaired:
        raise DatasetError("; ".join([*unpaired, CUSTOM_LAYOUT]))
    samples = [Sample(stem, images[stem], labels[stem]) for stem in images]
    folder = CustomFolder(root, samples, split, num_classes)
    folder.pipeline = pipeline
    return folder


CUSTOM_PREFIX = "custom:"


def open_data(
    dataset: str,
    data: str | Path,
    split: str,
    num_classes: int | None = None,
    pipeline: InferencePipeline | None = None,
) -> SegmentationFolder:
    """The ``split`` of ``dataset`` under the folder ``data``, or of the user's dataset ``custom:DIR``.

    What ``--data-root DIR`` and ``--data custom:DIR --num-classes K`` name on the command line;
    a custom dataset needs ``num_classes``.
    """
    data = str(data)
    if not data.startswith(CUSTOM_PREFIX):
        return open_dataset(dataset, data, split, pipeline)
    if num_classes is None:
        raise DatasetError(f"{data}: a custom dataset needs its number of classes; pass --num-classes K")
    return open_custom_dataset(data[len(CUSTOM_PREFIX) :], split, num_classes, pipeline)
