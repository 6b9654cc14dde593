"""The check of a user's dataset before training or evaluation: every bad file named with what is wrong with it,
nothing built when one is found, and a rerun that reads only the files that changed."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segzoo.cli import main
from segzoo.datasets import check
from segzoo.datasets.check import check_custom_data
from segzoo.datasets.folders import DatasetError, open_custom_dataset

ENTRY = "moganet_xt_fpn_ade20k"
SIZE = (12, 16)  # (H, W) of every image and label


def save(path: Path, array: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)
    return path


def make_dataset(root: Path, split: str = "train", count: int = 3, classes: int = 3) -> Path:
    """``count`` good pairs named ``s0``, ``s1``, ...: JPEG images and labels of classes 0..classes-1 and 255."""
    rng = np.random.default_rng(0)
    for i in range(count):
        save(root / "images" / split / f"s{i}.jpg", rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8))
        save(root / "labels" / split / f"s{i}.png", rng.choice(np.array([*range(classes), 255], np.uint8), SIZE))
    return root


def label_with(root: Path, name: str, value: int, split: str = "train", size: tuple[int, int] = SIZE) -> Path:
    label = np.zeros(size, np.uint8)
    label[0, 0] = value
    return save(root / "labels" / split / f"{name}.png", label)


def open_splits(root: Path, classes: int = 3, splits=("train",)):
    return [open_custom_dataset(root, split, classes) for split in splits]


def failure(folders, workers: int = 0) -> str:
    with pytest.raises(DatasetError) as raised:
        check_custom_data(folders, workers, progress=False)
    return str(raised.value)


@pytest.fixture
def counted_reads(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """How many times each file was read by the check (``workers=0``: reads happen in this thread)."""
    reads: Counter = Counter()
    for name in ("read_image_facts", "read_label_facts"):
        reader = getattr(check, name)
        monkeypatch.setattr(check, name, lambda path, reader=reader: (reads.update([path.name]), reader(path))[1])
    return reads


def test_a_good_dataset_passes_with_255_and_the_last_class(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, count=4)
    label_with(root, "s0", 2)  # K - 1
    label_with(root, "s1", 255)
    check_custom_data(open_splits(root, splits=("train",)), workers=2, progress=False)


def test_every_bad_file_of_both_splits_is_named_with_what_is_wrong(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, count=7)
    make_dataset(tmp_path, "val", count=2)
    label_with(root, "s0", 3)  # == K
    label_with(root, "s1", 254)  # not the ignore index
    label_with(root, "s2", 1, size=(12, 15))
    jpeg = (root / "images" / "train" / "s3.jpg").read_bytes()
    (root / "images" / "train" / "s3.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    save(root / "labels" / "train" / "s4.png", np.zeros((*SIZE, 3), np.uint8))  # colour
    label_with(root, "s5", 9, size=(11, 16))  # two problems, one file
    label_with(root, "s1", 7, split="val")
    message = failure(open_splits(root, splits=("train", "val")), workers=2)
    lines = message.splitlines()
    assert lines[0] == f"7 files of {root} cannot be used:", message
    train, val = root / "labels" / "train", root / "labels" / "val"
    expected = [
        f"label {train / 's0.png'} has class index 3, but the dataset has 3 classes (0..2, 255 = ignore)",
        f"label {train / 's1.png'} has class index 254, but the dataset has 3 classes",
        f"label {train / 's2.png'} is 15x12 but its image {root / 'images' / 'train' / 's2.jpg'} is 16x12",
        f"image {root / 'images' / 'train' / 's3.jpg'} cannot be read (OSError: ",
        f"label {train / 's4.png'} is a 'RGB' image",
        f"label {train / 's5.png'} is 16x11 but its image",
        f"label {val / 's1.png'} has class index 7",
    ]
    for line, start in zip(lines[1:8], expected):
        assert line.strip().startswith(start), (line, start)
    assert "and has class index 9" in lines[6]
    assert lines[8:] == [  # what to do, once per kind of problem
        "pass the right --num-classes or fix the labels",
        "labels must be single-channel 8-bit PNGs of class indices (mode 'L' or 'P'): convert colour-coded masks "
        "to one index per pixel first, e.g. Image.fromarray(index_array.astype('uint8')).save(path)",
    ]


def test_one_bad_file_is_one_line_naming_it(tmp_path: Path) -> None:
    root = make_dataset(tmp_path)
    bad = label_with(root, "s1", 5)
    assert failure(open_splits(root)) == (
        f"label {bad} has class index 5, but the dataset has 3 classes (0..2, 255 = ignore); "
        f"pass the right --num-classes or fix the labels"
    )


def test_more_than_twenty_bad_files_show_twenty_and_a_count(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, count=26)
    for i in range(25):
        label_with(root, f"s{i}", 3)
    lines = failure(open_splits(root), workers=2).splitlines()
    assert lines[0] == f"25 files of {root} cannot be used:"
    assert len([line for line in lines if "has class index 3" in line]) == 20
    assert lines[21] == "  and 5 more" and lines[22] == "pass the right --num-classes or fix the labels"


def test_labels_match_images_turned_upright_by_exif_orientation(tmp_path: Path) -> None:
    root = make_dataset(tmp_path, count=1)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: the upright image is 12 wide, 16 high
    save(root / "images" / "train" / "s0.jpg", np.zeros((*SIZE, 3), np.uint8), exif=exif)
    label_with(root, "s0", 1, size=(16, 12))
    (folder,) = open_splits(root)
    check_custom_data([folder], 0, progress=False)
    assert folder[0]["image"].shape[:2] == folder[0]["label"].shape == (16, 12)


def test_a_rerun_reads_only_the_files_that_changed(tmp_path: Path, counted_reads: Counter) -> None:
    root = make_dataset(tmp_path, count=3)
    bad = label_with(root, "s2", 4)
    assert "s2.png has class index 4" in failure(open_splits(root))
    assert sum(counted_reads.values()) == 6
    counted_reads.clear()
    assert "s2.png has class index 4" in failure(open_splits(root))  # facts, not verdicts, are remembered
    check_custom_data(open_splits(root, classes=5), 0, progress=False)
    assert not counted_reads
    stat = bad.stat()
    os.utime(bad, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: same size, new time
    check_custom_data(open_splits(root, classes=5), 0, progress=False)
    assert counted_reads == Counter({"s2.png": 1})
    counted_reads.clear()
    label_with(root, "s2", 1)  # fixed
    (root / "images" / "train" / "s0.jpg").unlink()
    (root / "labels" / "train" / "s0.png").unlink()
    check_custom_data(open_splits(root), 0, progress=False)
    assert counted_reads == Counter({"s2.png": 1})
    counted_reads.clear()
    for cache_file in (tmp_path / "cache" / "datacheck").iterdir():  # conftest's SEGZOO_CACHE
        cache_file.write_text("{not json")
    check_custom_data(open_splits(root), 0, progress=False)
    assert sum(counted_reads.values()) == 4


def test_a_cache_that_cannot_be_written_costs_only_the_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("SEGZOO_CACHE", str(blocker))
    check_custom_data(open_splits(make_dataset(tmp_path / "data")), 0, progress=False)
    assert "could not remember the check of" in caplog.text


def test_segzoo_eval_names_a_label_out_of_range_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_dataset(tmp_path / "data", "val")
    bad = label_with(root, "s1", 3, split="val")
    argv = ["eval", ENTRY, "--data", f"custom:{root}", "--num-classes", "3", "--checkpoint", str(tmp_path / "x.pth")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err == (
        f"segzoo: error: label {bad} has class index 3, but the dataset has 3 classes (0..2, 255 = ignore); "
        "pass the right --num-classes or fix the labels\n"
    )


def test_training_on_bad_data_builds_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("torchvision")
    from segzoo.training import loop

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(loop, "build_model", no_model)
    root = make_dataset(tmp_path / "data")
    make_dataset(root, "val")
    train_bad, val_bad = label_with(root, "s0", 254), label_with(root, "s2", 3, split="val")
    work_dir = tmp_path / "work"
    argv = ["train", ENTRY, "--data", f"custom:{root}", "--num-classes", "3", "--work-dir", str(work_dir)]
    assert main([*argv, "--device", "cpu", "--workers", "2", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"segzoo: error: 2 files of {root} cannot be used:")
    assert f"label {train_bad} has class index 254" in err and f"label {val_bad} has class index 3" in err
    assert not work_dir.exists()
