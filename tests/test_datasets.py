"""Dataset metadata, folder readers and label preparation, on tiny synthetic datasets."""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segzoo.datasets import dataset_metadata
from segzoo.datasets.coco_stuff import STUFF_CATEGORIES, panoptic_to_semantic
from segzoo.datasets.folders import DatasetError, SegmentationFolder, open_dataset
from segzoo.datasets.prepare import prepare_cityscapes, prepare_coco_stuff54

H, W = 40, 60
CITIES = {
    "frankfurt": ["frankfurt_000000_000294", "frankfurt_000001_000538"],
    "lindau": ["lindau_000000_000019"],
}
# Cityscapes label id -> train id, from the official table: road, car, unlabeled, bicycle,
# parking (not evaluated), and 255 where a license plate (id -1) lands in a uint8 PNG.
CITYSCAPES_PAIRS = {7: 0, 26: 13, 0: 255, 33: 18, 9: 255, 255: 255}


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def random_rgb(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root``: its bytes and modification time."""
    files = (p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


def make_ade20k(root: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = {}
    for i in (3, 1, 2):
        name = f"ADE_val_{i:08d}"
        save(root / "images" / "validation" / f"{name}.jpg", random_rgb(rng))
        labels[name] = rng.choice(np.array([0, 1, 2, 150, 255], dtype=np.uint8), (H, W))
        save(root / "annotations" / "validation" / f"{name}.png", labels[name])
    return labels


def make_cityscapes(root: Path, label_kind: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    ids = CITYSCAPES_PAIRS.values() if label_kind == "labelTrainIds" else CITYSCAPES_PAIRS  # train ids: 0..18, 255
    values = np.array(list(ids), dtype=np.uint8)
    labels = {}
    for city, stems in CITIES.items():
        for stem in stems:
            save(root / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png", random_rgb(rng))
            labels[stem] = rng.choice(values, (H, W))
            save(root / "gtFine" / "val" / city / f"{stem}_gtFine_{label_kind}.png", labels[stem])
    return labels


def coco_categories(seed: int) -> list[dict]:
    """A panoptic json's categories: two things and all stuff, in shuffled order."""
    cats = [{"id": 1, "name": "person", "isthing": 1}, {"id": 3, "name": "car", "isthing": 1}]
    cats += [{"id": i, "name": name, "isthing": 0, "color": list(c)} for i, name, c in STUFF_CATEGORIES]
    random.Random(seed).shuffle(cats)
    return cats


def encode_ids(ids: np.ndarray) -> np.ndarray:
    """panopticapi's id2rgb."""
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def make_coco(root: Path) -> dict[str, np.ndarray]:
    """Two val2017 images with panoptic annotations; returns the expected stuff labels."""
    rng = np.random.default_rng(2)
    # segment id -> category id: person, banner (first stuff), rug (last stuff), car.
    segments = {1: 1, 300: 92, 70000: 200, 5: 3}
    annotations, expected = [], {}
    for image_id in (139, 285):
        stem = f"{image_id:012d}"
        save(root / "val2017" / f"{stem}.jpg", random_rgb(rng))
        ids = rng.choice(np.array([0, 1, 300, 70000, 5, 4242]), (H, W))  # 4242: not in segments_info
        save(root / "panoptic_val2017" / f"{stem}.png", encode_ids(ids))
        annotations.append(
            {
                "image_id": image_id,
                "file_name": f"{stem}.png",
                "segments_info": [{"id": s, "category_id": c} for s, c in segments.items()],
            }
        )
        classes = np.select([ids == 1, ids == 5, ids == 300, ids == 70000], [0, 0, 1, 53], 255)
        expected[stem] = classes.astype(np.uint8)
    panoptic = {"annotations": annotations, "categories": coco_categories(seed=0)}
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "panoptic_val2017.json").write_text(json.dumps(panoptic))
    return expected


@pytest.mark.parametrize("dataset, n", [("ADE20K", 150), ("Cityscapes", 19), ("COCO-Stuff54", 54)])
def test_metadata(dataset: str, n: int) -> None:
    classes, palette = dataset_metadata(dataset)
    assert len(classes) == len(palette) == n
    assert len(set(classes)) == n
    assert all(len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in palette)


def test_class_names_line_up() -> None:
    classes, palette = dataset_metadata("Cityscapes")
    assert (classes[0], palette[0]) == ("road", (128, 64, 128))
    assert (classes[13], palette[13]) == ("car", (0, 0, 142))
    classes, palette = dataset_metadata("COCO-Stuff54")
    assert (classes[0], palette[0]) == ("things", (82, 18, 128))
    assert (classes[1], classes[7], classes[-1]) == ("banner", "door-stuff", "rug")
    assert "sky" in classes and "window" in classes and not any("-merged" in c for c in classes)


@pytest.mark.parametrize("nested", [True, False])
def test_ade20k_reads_and_reduces_zero_label(tmp_path: Path, nested: bool) -> None:
    labels = make_ade20k(tmp_path / "ADEChallengeData2016")
    ds = open_dataset("ADE20K", tmp_path if nested else tmp_path / "ADEChallengeData2016")
    assert isinstance(ds, SegmentationFolder) and ds.ignore_index == 255 and len(ds.classes) == 150
    assert [s.name for s in ds.samples] == ["ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000003"]
    item = ds[0]
    assert item["name"] == "ADE_val_00000001"
    assert item["image"].shape == (H, W, 3) and item["image"].dtype == np.uint8
    raw = labels["ADE_val_00000001"]
    expected = np.select([raw == 0, raw == 255], [255, 255], raw.astype(np.int64) - 1).astype(np.uint8)
    assert item["label"].dtype == np.uint8
    np.testing.assert_array_equal(item["label"], expected)
    assert {0, 1, 149, 255} <= set(np.unique(item["label"]).tolist())


def test_cityscapes_reads(tmp_path: Path) -> None:
    labels = make_cityscapes(tmp_path, "labelTrainIds")
    ds = open_dataset("Cityscapes", tmp_path, "val")
    assert [s.name for s in ds.samples] == sorted(labels)
    for item in ds:
        assert item["image"].shape == (H, W, 3)
        np.testing.assert_array_equal(item["label"], labels[item["name"]])


def test_cityscapes_points_at_the_official_annotations(tmp_path: Path) -> None:
    make_cityscapes(tmp_path, "labelTrainIds")
    ds = open_dataset("Cityscapes", tmp_path, "val")
    assert ds.split == "val"
    gt = tmp_path / "gtFine" / "val"
    assert ds[0]["annotations"] == {
        "labelIds": gt / "frankfurt" / "frankfurt_000000_000294_gtFine_labelIds.png",
        "instanceIds": gt / "frankfurt" / "frankfurt_000000_000294_gtFine_instanceIds.png",
    }
    with pytest.raises(DatasetError, match="3 of 3 Cityscapes val samples have no instanceIds file") as err:
        ds.annotation_files("instanceIds")
    assert "unzip gtFine_trainvaltest.zip into" in str(err.value)
    assert str(gt / "lindau" / "lindau_000000_000019_gtFine_instanceIds.png") in str(err.value)

    make_cityscapes(tmp_path, "instanceIds")
    assert ds.annotation_files("instanceIds") == [s.annotations["instanceIds"] for s in ds.samples]
    with pytest.raises(DatasetError, match=r"known: \['instanceIds', 'labelIds'\]"):
        ds.annotation_files("polygons")


def test_cityscapes_prepare(tmp_path: Path) -> None:
    pytest.importorskip("cityscapesscripts.helpers.labels")
    label_ids = make_cityscapes(tmp_path, "labelIds")
    with pytest.raises(DatasetError, match="segzoo prepare cityscapes") as err:
        open_dataset("Cityscapes", tmp_path)
    assert "frankfurt_000000_000294_gtFine_labelTrainIds.png" in str(err.value)

    sources = snapshot(tmp_path)
    assert prepare_cityscapes(tmp_path, progress=False) == 3
    prepared = snapshot(tmp_path)
    assert {k: v for k, v in prepared.items() if k in sources} == sources
    assert len(prepared) == len(sources) + 3

    lut = np.zeros(256, dtype=np.uint8)
    lut[list(CITYSCAPES_PAIRS)] = list(CITYSCAPES_PAIRS.values())
    for item in open_dataset("Cityscapes", tmp_path):
        np.testing.assert_array_equal(item["label"], lut[label_ids[item["name"]]])

    assert prepare_cityscapes(tmp_path, progress=False) == 0
    assert snapshot(tmp_path) == prepared


def test_cityscapes_prepare_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("cityscapesscripts.helpers.labels")
    make_cityscapes(tmp_path, "labelIds")
    sources = snapshot(tmp_path)

    def interrupted(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_cityscapes(tmp_path, progress=False)
    assert snapshot(tmp_path) == sources


def test_cityscapes_prepare_needs_cityscapesscripts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_cityscapes(tmp_path, "labelIds")
    monkeypatch.setitem(sys.modules, "cityscapesscripts.helpers.labels", None)
    with pytest.raises(ImportError, match=r'pip install "segzoo\[cityscapes\]"'):
        prepare_cityscapes(tmp_path)


def test_cityscapes_prepare_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "gtFine"))):
        prepare_cityscapes(tmp_path)
    (tmp_path / "gtFine" / "val").mkdir(parents=True)
    with pytest.raises(DatasetError, match="labelIds"):
        prepare_cityscapes(tmp_path)


def test_panoptic_to_semantic_maps_by_sorted_category_id() -> None:
    ids = np.array([[0, 1, 2], [3, 4, 9]])
    segments = [
        {"id": 1, "category_id": 7},
        {"id": 2, "category_id": 50},
        {"id": 3, "category_id": 20},
        {"id": 4, "category_id": 30},
    ]
    categories = [{"id": 50, "isthing": 0}, {"id": 7, "isthing": 1}, {"id": 30, "isthing": 1}, {"id": 20, "isthing": 0}]
    out = panoptic_to_semantic(encode_ids(ids), segments, categories)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[255, 0, 2], [1, 0, 255]])


@pytest.mark.parametrize("png_parent", [".", "annotations"])
def test_coco_stuff54_prepare_and_read(tmp_path: Path, png_parent: str) -> None:
    expected = make_coco(tmp_path)
    (tmp_path / "panoptic_val2017").rename(tmp_path / png_parent / "panoptic_val2017")
    with pytest.raises(DatasetError, match="segzoo prepare coco-stuff54") as err:
        open_dataset("COCO-Stuff54", tmp_path)
    assert str(tmp_path / "panoptic_stuff_val2017") in str(err.value)

    sources = snapshot(tmp_path)
    assert prepare_coco_stuff54(tmp_path, progress=False) == 2
    prepared = snapshot(tmp_path)
    assert {k: v for k, v in prepared.items() if k in sources} == sources
    ds = open_dataset("COCO-Stuff54", tmp_path)
    assert [s.name for s in ds.samples] == ["000000000139", "000000000285"]
    for item in ds:
        np.testing.assert_array_equal(item["label"], expected[item["name"]])

    assert prepare_coco_stuff54(tmp_path, progress=False) == 0
    assert snapshot(tmp_path) == prepared


def test_coco_stuff54_prepare_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="annotations/panoptic_val2017.json"):
        prepare_coco_stuff54(tmp_path)
    make_coco(tmp_path)
    panoptic = json.loads((tmp_path / "annotations" / "panoptic_val2017.json").read_text())
    panoptic["categories"] = [c for c in panoptic["categories"] if c["id"] != 92]
    (tmp_path / "annotations" / "panoptic_val2017.json").write_text(json.dumps(panoptic))
    with pytest.raises(DatasetError, match="stuff category ids"):
        prepare_coco_stuff54(tmp_path)
    (tmp_path / "panoptic_val2017").rename(tmp_path / "elsewhere")
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "panoptic_val2017"))):
        prepare_coco_stuff54(tmp_path)


def test_missing_folders_name_the_expected_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "images" / "validation"))):
        open_dataset("ADE20K", tmp_path)
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "leftImg8bit" / "val"))):
        open_dataset("Cityscapes", tmp_path)
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "val2017"))):
        open_dataset("COCO-Stuff54", tmp_path)
    (tmp_path / "images" / "validation").mkdir(parents=True)
    (tmp_path / "annotations" / "validation").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        open_dataset("ADE20K", tmp_path)
    with pytest.raises(DatasetError, match="not a folder"):
        open_dataset("ADE20K", tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="split"):
        open_dataset("ADE20K", tmp_path, "test")
    with pytest.raises(DatasetError, match="known"):
        open_dataset("VOC", tmp_path)


def test_unpaired_files_are_listed(tmp_path: Path) -> None:
    make_ade20k(tmp_path)
    (tmp_path / "annotations" / "validation" / "ADE_val_00000002.png").unlink()
    with pytest.raises(DatasetError, match="1 of 3 images have no label") as err:
        open_dataset("ADE20K", tmp_path)
    assert str(tmp_path / "annotations" / "validation" / "ADE_val_00000002.png") in str(err.value)

    (tmp_path / "images" / "validation" / "ADE_val_00000002.jpg").unlink()
    (tmp_path / "images" / "validation" / "ADE_val_00000003.jpg").unlink()
    with pytest.raises(DatasetError, match="have no image") as err:
        open_dataset("ADE20K", tmp_path)
    assert str(tmp_path / "images" / "validation" / "ADE_val_00000003.jpg") in str(err.value)
