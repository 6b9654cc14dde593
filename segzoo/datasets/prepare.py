"""Make the label files that the folder readers expect from a dataset's official annotations.

Runs are idempotent: sources are only read, outputs that already exist are skipped, and each
output is written under a temporary name first, so an interrupted run leaves no partial label.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from segzoo.datasets.coco_stuff import STUFF_CATEGORIES, panoptic_to_semantic
from segzoo.datasets.folders import IGNORE_INDEX, DatasetError, _read_label

_COCO_SPLITS = ("val2017", "train2017")


def prepare_cityscapes(root: str | Path, progress: bool | None = None) -> int:
    """Write ``*_gtFine_labelTrainIds.png`` beside every ``gtFine/*/*/*_gtFine_labelIds.png``.

    Label ids map to train ids with the official ``cityscapesscripts`` label table; labels not
    evaluated become 255. Returns the number of files written.
    """
    root = Path(root).expanduser()
    gt_dir = root / "gtFine"
    if not gt_dir.is_dir():
        raise DatasetError(f"no Cityscapes label folder {gt_dir}; unzip gtFine_trainvaltest.zip into {root}")
    sources = sorted(gt_dir.glob("*/*/*_gtFine_labelIds.png"))
    if not sources:
        raise DatasetError(
            f"no label files {gt_dir}/<split>/<city>/*_gtFine_labelIds.png; unzip gtFine_trainvaltest.zip into {root}"
        )
    to_train_id = _cityscapes_train_ids()
    todo = [
        (src, src.with_name(src.name.replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png"))) for src in sources
    ]
    todo = [(src, dst) for src, dst in todo if not dst.exists()]
    for src, dst in tqdm(todo, desc="Cityscapes labelTrainIds", unit="file", disable=_disable(progress)):
        _write_png(to_train_id[_read_label(src)], dst)
    return len(todo)


def prepare_coco_stuff54(root: str | Path, progress: bool | None = None) -> int:
    """Write ``panoptic_stuff_<split>/<image stem>.png`` for each COCO panoptic split under ``root``.

    A split (val2017, train2017) is prepared when ``annotations/panoptic_<split>.json`` is there;
    its PNGs are read from ``panoptic_<split>/`` (or ``annotations/panoptic_<split>/``). Returns
    the number of files written.
    """
    root = Path(root).expanduser()
    todo = []
    splits = [s for s in _COCO_SPLITS if (root / "annotations" / f"panoptic_{s}.json").is_file()]
    if not splits:
        raise DatasetError(
            f"no COCO panoptic annotations in {root}: expected annotations/panoptic_val2017.json "
            f"(or panoptic_train2017.json) with its PNG folder panoptic_val2017/; unzip "
            f"panoptic_annotations_trainval2017.zip into {root}, then annotations/panoptic_val2017.zip"
        )
    for split in splits:
        ann_file = root / "annotations" / f"panoptic_{split}.json"
        png_dir = _panoptic_png_dir(root, split)
        with open(ann_file, encoding="utf-8") as f:
            panoptic = json.load(f)
        categories = panoptic["categories"]
        _check_stuff_categories(categories, ann_file)
        out_dir = root / f"panoptic_stuff_{split}"
        for ann in panoptic["annotations"]:
            dst = out_dir / f"{Path(ann['file_name']).stem}.png"
            if not dst.exists():
                todo.append((png_dir / ann["file_name"], ann["segments_info"], categories, dst))
    for src, segments, categories, dst in tqdm(
        todo, desc="COCO-Stuff54 labels", unit="file", disable=_disable(progress)
    ):
        if not src.is_file():
            raise DatasetError(f"panoptic annotation PNG {src} is missing; unzip it again")
        with Image.open(src) as png:
            panoptic_rgb = np.array(png.convert("RGB"))
        _write_png(panoptic_to_semantic(panoptic_rgb, segments, categories), dst)
    return len(todo)


def _cityscapes_train_ids() -> np.ndarray:
    """A 256-entry lookup table from Cityscapes label id to train id (255 = ignored)."""
    try:
        from cityscapesscripts.helpers.labels import labels  # noqa: PLC0415 (the optional cityscapes extra: imported when used)
    except ImportError as e:
        raise ImportError(
            'preparing Cityscapes uses the official label table of cityscapesscripts: pip install "segzoo[cityscapes]"'
        ) from e
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label in labels:
        if 0 <= label.id < 256 and 0 <= label.trainId < IGNORE_INDEX:
            lut[label.id] = label.trainId
    return lut


def _panoptic_png_dir(root: Path, split: str) -> Path:
    """Where the panoptic PNGs of ``split`` were unzipped: ``root`` (detectron2) or ``annotations``."""
    for png_dir in (root / f"panoptic_{split}", root / "annotations" / f"panoptic_{split}"):
        if png_dir.is_dir():
            return png_dir
    raise DatasetError(
        f"no panoptic PNG folder {root / f'panoptic_{split}'} for annotations/panoptic_{split}.json; "
        f"unzip annotations/panoptic_{split}.zip into {root}"
    )


def _check_stuff_categories(categories: Sequence[Mapping], ann_file: Path) -> None:
    """Fail unless the json's stuff categories are those that COCO-Stuff54's class names describe."""
    found = sorted(c["id"] for c in categories if not c["isthing"])
    expected = [cat_id for cat_id, _, _ in STUFF_CATEGORIES]
    if found != expected:
        raise DatasetError(
            f"{ann_file} has stuff category ids {found}; COCO-Stuff54 expects the {len(expected)} "
            f"of COCO panoptic 2017 ({expected[0]}..{expected[-1]})"
        )


def _write_png(label: np.ndarray, dst: Path) -> None:
    """Save ``label`` as a grayscale PNG at ``dst`` through a temporary file in the same folder."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            Image.fromarray(label).save(f, format="PNG")
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _disable(progress: bool | None) -> bool | None:
    """tqdm's ``disable``: None shows the bar only on a terminal."""
    return None if progress is None else not progress
