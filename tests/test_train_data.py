"""Training data: each upstream pipeline op on worked examples, the sampler contract, custom folders, the loader."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("torchvision")

from segzoo.datasets.check import check_custom_data
from segzoo.datasets.folders import DatasetError, open_custom_dataset
from segzoo.training import get_recipe
from segzoo.training.data import (
    InfiniteSampler,
    build_train_dataset,
    build_train_loader,
    collate,
    seed_worker,
)
from segzoo.training.recipe import PipelineSpec
from segzoo.training.transforms import (
    CROP_TRIES,
    TrainTransform,
    pad_to,
    photometric_distortion,
    random_crop,
    random_rescale,
    shortest_edge_resize,
)


class Scripted:
    """A stand-in for ``numpy.random.Generator`` returning given values, one list per method."""

    def __init__(self, **draws: list) -> None:
        self.draws = {name: list(values) for name, values in draws.items()}

    def _next(self, name: str):
        return self.draws[name].pop(0)

    def random(self):
        return self._next("random")

    def integers(self, low, high=None):
        return self._next("integers")

    def uniform(self, low, high):
        return self._next("uniform")

    def choice(self, values):
        return self._next("choice")


def save(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


# --- mmseg ops ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratio_draw", "expected"),
    [
        # ratio 0.5: scale (1024, 256); factor min(1024/400, 256/300) = 0.8533; (int(256.0 + .5), int(341.33 + .5))
        (0.0, (256, 341)),
        # ratio 1.25: scale (2560, 640); factor min(6.4, 2.1333); (int(640.0 + .5), int(853.33 + .5))
        (0.5, (640, 853)),
    ],
)
def test_random_rescale_keeps_ratio_with_mmcv_rounding(ratio_draw: float, expected: tuple[int, int]) -> None:
    image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    label = np.tile(np.array([3, 7, 255], np.uint8), (300, 134))[:, :400]
    out_image, out_label = random_rescale(image, label, (2048, 512), (0.5, 2.0), Scripted(random=[ratio_draw]))
    assert out_image.shape == (*expected, 3) and out_image.dtype == np.uint8
    assert out_label.shape == expected
    assert set(np.unique(out_label)) <= {3, 7, 255}  # nearest: no blended class values


def test_random_crop_rejects_crops_dominated_by_one_class() -> None:
    label = np.zeros((4, 12), np.uint8)
    label[:, 4:8] = 255  # ignored pixels do not count: this window holds class 0 only
    label[:, 8:10], label[:, 10:] = 1, 2  # two classes, half each
    image = np.arange(4 * 12 * 3, dtype=np.uint8).reshape(4, 12, 3)
    # (top, left) draws: class 0 alone (rejected), ignore + class 0 (rejected), classes 1 and 2 (kept)
    rng = Scripted(integers=[0, 0, 0, 3, 0, 8])
    out_image, out_label = random_crop(image, label, (4, 4), 0.75, rng)
    np.testing.assert_array_equal(out_label, label[:, 8:12])
    np.testing.assert_array_equal(out_image, image[:, 8:12])
    assert rng.draws["integers"] == []


def test_random_crop_takes_the_next_window_unchecked_after_ten_rejections() -> None:
    label = np.zeros((4, 20), np.uint8)
    lefts = list(range(CROP_TRIES + 1))
    rng = Scripted(integers=[v for left in lefts for v in (0, left)])
    _, out_label = random_crop(np.zeros((4, 20, 3), np.uint8), label, (4, 4), 0.75, rng)
    assert rng.draws["integers"] == [] and out_label.shape == (4, 4)


def test_random_crop_of_a_smaller_image_keeps_its_side() -> None:
    image, label = np.zeros((3, 10, 3), np.uint8), np.zeros((3, 10), np.uint8)
    out_image, out_label = random_crop(image, label, (5, 4), 1.0, Scripted(integers=[0, 6]))
    assert out_image.shape == (3, 4, 3) and out_label.shape == (3, 4)


def test_pad_fills_image_with_pad_val_and_label_with_ignore_at_bottom_right() -> None:
    image, label = torch.ones(3, 2, 3), torch.full((2, 3), 4, dtype=torch.int64)
    padded_image, padded_label = pad_to(image, label, (4, 5))
    assert padded_image.shape == (3, 4, 5) and padded_label.shape == (4, 5)
    assert torch.equal(padded_image[:, :2, :3], image) and padded_image[:, 2:].eq(0).all()
    assert padded_image[:, :, 3:].eq(0).all()
    assert (
        torch.equal(padded_label[:2, :3], label)
        and padded_label[2:].eq(255).all()
        and padded_label[:, 3:].eq(255).all()
    )


def test_photometric_distortion_hand_worked_draws() -> None:
    spec = PipelineSpec("mmseg")
    image = np.array([[[250, 100, 3]]], np.uint8)
    # brightness on (+10.7), contrast first (mode 1) on (x1.5), saturation off, hue off
    rng = Scripted(integers=[1, 1, 1, 0, 0], uniform=[10.7, 1.5])
    # 250 -> 260.7 -> 255 -> 382.5 -> 255; 100 -> 110.7 -> 110 -> 165; 3 -> 13.7 -> 13 -> 19.5 -> 19
    np.testing.assert_array_equal(photometric_distortion(image, spec, rng), [[[255, 165, 19]]])
    red = np.array([[[255, 0, 0]]], np.uint8)
    # hue on: H 0 + 60 (of OpenCV's 180) is green
    rng = Scripted(integers=[0, 0, 0, 1, 60, 0])
    np.testing.assert_array_equal(photometric_distortion(red, spec, rng), [[[0, 255, 0]]])
    # saturation on, x0.5: S 255 -> 127, V 255: (255, 255 * (1 - 127/255), same) = (255, 128, 128)
    rng = Scripted(integers=[0, 0, 1, 0, 0], uniform=[0.5])
    np.testing.assert_array_equal(photometric_distortion(red, spec, rng), [[[255, 128, 128]]])


def test_photometric_distortion_stays_uint8_and_changes_pixels() -> None:
    image = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    outputs = [photometric_distortion(image, PipelineSpec("mmseg"), np.random.default_rng(seed)) for seed in range(8)]
    assert all(out.dtype == np.uint8 and out.shape == image.shape for out in outputs)
    assert any(not np.array_equal(out, image) for out in outputs)


def small_recipe(**pipeline):
    """MogaNet-S's recipe with mmseg's pipeline at a small scale and crop."""
    return replace(
        get_recipe("moganet_s_fpn_ade20k"),
        crop_size=(16, 24),
        pipeline=PipelineSpec("mmseg", **{"img_scale": (96, 24), **pipeline}),
    )


def test_flip_mirrors_image_and_label_together() -> None:
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    label = rng.integers(0, 4, (48, 80), dtype=np.uint8)
    kept = TrainTransform(small_recipe(flip_prob=0.0))(image, label, np.random.default_rng([0, 5]))
    flipped = TrainTransform(small_recipe(flip_prob=1.0))(image, label, np.random.default_rng([0, 5]))
    assert kept[0].shape == (3, 16, 24) and kept[1].dtype == torch.int64
    assert torch.equal(flipped[0], kept[0].flip(-1)) and torch.equal(flipped[1], kept[1].flip(-1))


def test_mmseg_transform_pads_a_small_image_to_the_crop() -> None:
    image, label = np.full((6, 8, 3), 128, np.uint8), np.ones((6, 8), np.uint8)
    recipe = small_recipe(photometric=False, flip_prob=0.0, img_scale=(8, 6), ratio_range=(1.0, 1.0))
    pixels, target = TrainTransform(recipe)(image, label, np.random.default_rng(0))
    assert pixels.shape == (3, 16, 24) and target.shape == (16, 24)
    assert target[:6, :8].eq(1).all() and target[6:].eq(255).all() and pixels[:, 6:].eq(0).all()
    mean, std = torch.tensor([123.675, 116.28, 103.53]), torch.tensor([58.395, 57.12, 57.375])
    torch.testing.assert_close(pixels[:, 0, 0], (128 - mean) / std)


# --- detectron2 --------------------------------------------------------------------------------------------------


def test_shortest_edge_choice_and_long_edge_cap() -> None:
    image, label = np.zeros((100, 300, 3), np.uint8), np.zeros((100, 300), np.uint8)
    spec = PipelineSpec("detectron2", min_size_train=(32, 48, 64), max_size_train=150)
    # 64: (64, 192) exceeds 150, so both scale by 150 / 192: (50, 150)
    out_image, out_label = shortest_edge_resize(image, label, spec, Scripted(choice=[64]))
    assert out_image.shape == (50, 150, 3) and out_label.shape == (50, 150)
    heights = {shortest_edge_resize(image, label, spec, np.random.default_rng(s))[0].shape[0] for s in range(30)}
    assert heights == {32, 48, 50}  # 32 -> (32, 96), 48 -> (48, 144), 64 -> capped


def test_shortest_edge_resize_is_pil_bilinear_and_nearest() -> None:
    rng = np.random.default_rng(3)
    image, label = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), rng.integers(0, 5, (30, 40), dtype=np.uint8)
    spec = PipelineSpec("detectron2", min_size_train=(21,), max_size_train=1000)
    out_image, out_label = shortest_edge_resize(image, label, spec, Scripted(choice=[21]))
    np.testing.assert_array_equal(out_image, np.asarray(Image.fromarray(image).resize((28, 21), Image.BILINEAR)))
    np.testing.assert_array_equal(out_label, np.asarray(Image.fromarray(label).resize((28, 21), Image.NEAREST)))


def test_detectron2_transform_is_bgr_normalized_without_crop() -> None:
    recipe = replace(
        get_recipe("emanet_r50_coco"),
        pipeline=PipelineSpec("detectron2", flip_prob=0.0, min_size_train=(20,), max_size_train=100),
    )
    image = np.zeros((10, 30, 3), np.uint8)
    image[..., 0] = 255  # red
    pixels, target = TrainTransform(recipe)(image, np.zeros((10, 30), np.uint8), np.random.default_rng(0))
    assert pixels.shape == (3, 20, 60) and target.shape == (20, 60)
    expected = (torch.tensor([0.0, 0.0, 255.0]) - torch.tensor([103.53, 116.28, 123.675])) / torch.tensor(
        [57.375, 57.12, 58.395]
    )
    torch.testing.assert_close(pixels[:, 5, 5], expected)


def test_collate_pads_to_the_largest_sample() -> None:
    batch = [
        (torch.ones(3, 2, 4), torch.zeros(2, 4, dtype=torch.int64)),
        (torch.ones(3, 3, 2), torch.ones(3, 2, dtype=torch.int64)),
    ]
    images, labels = collate(batch)
    assert images.shape == (2, 3, 3, 4) and images.dtype == torch.float32
    assert labels.shape == (2, 3, 4) and labels.dtype == torch.int64
    assert images[0, :, 2].eq(0).all() and labels[0, 2].eq(255).all() and labels[1, :, 2:].eq(255).all()


# --- sampler -----------------------------------------------------------------------------------------------------


def take(sampler: InfiniteSampler, count: int) -> list[tuple[int, int]]:
    return list(itertools.islice(iter(sampler), count))


def test_two_ranks_see_what_one_rank_accumulating_two_sees() -> None:
    single = take(InfiniteSampler(7, seed=3, accumulation=2, micro_batch=1), 8)
    ranks = [take(InfiniteSampler(7, seed=3, rank=r, world_size=2, micro_batch=1), 4) for r in range(2)]
    assert single == [pair for step in zip(*ranks) for pair in step]
    assert [p for _, p in single] == list(range(8))


def test_sampler_resumes_the_stream_and_walks_seeded_permutations() -> None:
    full = take(InfiniteSampler(5, seed=1, micro_batch=2), 20)
    assert take(InfiniteSampler(5, seed=1, micro_batch=2, start_step=3), 14) == full[6:]
    for index, position in full:
        epoch, offset = divmod(position, 5)
        assert index == int(torch.randperm(5, generator=torch.Generator().manual_seed(1 + epoch))[offset])


def test_workers_are_seeded_from_seed_rank_and_worker_id() -> None:
    def draws(worker_id: int, rank: int) -> tuple[float, float]:
        seed_worker(worker_id, seed=9, rank=rank)
        return float(np.random.random()), float(torch.rand(()))

    assert draws(0, 0) == draws(0, 0)
    assert len({draws(0, 0), draws(1, 0), draws(0, 1)}) == 3


# --- custom folders ----------------------------------------------------------------------------------------------


def make_custom(root: Path, split: str = "train", stems=("a", "b"), classes: int = 3) -> None:
    rng = np.random.default_rng(4)
    for i, stem in enumerate(stems):
        suffix = ".jpg" if i % 2 else ".png"
        save(root / "images" / split / f"{stem}{suffix}", rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        save(root / "labels" / split / f"{stem}.png", rng.choice(np.array([*range(classes), 255], np.uint8), (12, 16)))


def test_custom_folder_reads_grey_and_palette_labels(tmp_path: Path) -> None:
    make_custom(tmp_path)
    palette = Image.fromarray(np.full((12, 16), 2, np.uint8), "P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] * 85 + [0])
    palette.save(tmp_path / "labels" / "train" / "b.png")
    folder = open_custom_dataset(tmp_path, "train", 3)
    assert len(folder) == 2 and [s.name for s in folder.samples] == ["a", "b"]
    assert folder.classes == ("class_0", "class_1", "class_2")
    assert folder[1]["label"].shape == (12, 16) and folder[1]["label"].max() == 2


def test_custom_folder_names_unpaired_files(tmp_path: Path) -> None:
    make_custom(tmp_path, stems=("a", "b", "c"))
    (tmp_path / "labels" / "train" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"1 of 3 images in .*images/train have no label.*b\.jpg"):
        open_custom_dataset(tmp_path, "train", 3)
    (tmp_path / "images" / "train" / "b.jpg").unlink()
    save(tmp_path / "labels" / "train" / "z.png", np.zeros((12, 16), np.uint8))
    with pytest.raises(DatasetError, match=r"1 labels in .*labels/train have no image.*z\.png"):
        open_custom_dataset(tmp_path, "train", 3)
    with pytest.raises(DatasetError, match=r"no folder .*images/val; expected DIR/images"):
        open_custom_dataset(tmp_path, "val", 3)
    (tmp_path / "labels" / "train" / "a.png").unlink()  # one of each: both named
    with pytest.raises(DatasetError, match=r"1 of 2 images .* no label.*a\.png; 1 labels .* no image.*z\.png; exp"):
        open_custom_dataset(tmp_path, "train", 3)


def test_custom_folder_rejects_colour_labels_and_classes_out_of_range(tmp_path: Path) -> None:
    make_custom(tmp_path)
    save(tmp_path / "labels" / "train" / "a.png", np.zeros((12, 16, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"a\.png is a 'RGB' image; labels must be single-channel.*convert"):
        check_custom_data([open_custom_dataset(tmp_path, "train", 3)], progress=False)
    label = np.zeros((12, 16), np.uint8)
    label[3, 4] = 7
    save(tmp_path / "labels" / "train" / "a.png", label)
    folder = open_custom_dataset(tmp_path, "train", 3)  # a label changed after the check still fails when read
    with pytest.raises(DatasetError, match=r"a\.png has class index 7, but the dataset has 3 classes"):
        folder[0]


def test_build_train_dataset_opens_custom_folders(tmp_path: Path) -> None:
    make_custom(tmp_path)
    recipe = get_recipe("moganet_s_fpn_ade20k")
    assert len(build_train_dataset(recipe, f"custom:{tmp_path}", num_classes=3)) == 2
    with pytest.raises(DatasetError, match="--num-classes"):
        build_train_dataset(recipe, f"custom:{tmp_path}")


# --- loader end to end -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ade20k_train(module_tmp: Callable[[str], Path]) -> Path:
    root = module_tmp("ade") / "ADEChallengeData2016"
    rng = np.random.default_rng(5)
    for i in range(1, 6):
        save(root / "images" / "training" / f"ADE_train_{i:08d}.jpg", rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
        save(
            root / "annotations" / "training" / f"ADE_train_{i:08d}.png",
            rng.choice(np.array([0, 1, 2, 150], np.uint8), (30, 40)),
        )
    return root


def batches(loader: torch.utils.data.DataLoader, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(itertools.islice(iter(loader), count))


def test_loader_batches_are_the_same_for_any_worker_count_and_split(ade20k_train: Path) -> None:
    recipe = small_recipe()
    dataset = build_train_dataset(recipe, ade20k_train.parent)
    serial = batches(build_train_loader(dataset, recipe, batch_size=2, seed=7), 3)
    images, labels = serial[0]
    assert images.shape == (2, 3, 16, 24) and images.dtype == torch.float32
    assert labels.shape == (2, 16, 24) and labels.dtype == torch.int64
    assert set(labels.unique().tolist()) <= {0, 1, 149, 255}  # ADE20K's zero label reduced
    parallel = batches(build_train_loader(dataset, recipe, batch_size=2, seed=7, workers=2), 3)
    for (a_images, a_labels), (b_images, b_labels) in zip(serial, parallel):
        assert torch.equal(a_images, b_images) and torch.equal(a_labels, b_labels)
    ranks = [
        batches(build_train_loader(dataset, recipe, batch_size=1, rank=r, world_size=2, seed=7), 3) for r in range(2)
    ]
    for (images, labels), rank0, rank1 in zip(serial, *ranks):
        assert torch.equal(images, torch.cat([rank0[0], rank1[0]]))
        assert torch.equal(labels, torch.cat([rank0[1], rank1[1]]))
    resumed = batches(build_train_loader(dataset, recipe, batch_size=2, seed=7, start_step=2), 1)
    assert torch.equal(resumed[0][0], serial[2][0])
