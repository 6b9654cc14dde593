"""Inference: the upstream test pipeline, whole/slide modes, aug-test, and segzoo.predict's inputs and outputs."""

import dataclasses
import os
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import segzoo
from segzoo.inference import (
    check_aspect_ratio,
    infer_labels,
    infer_scores,
    keep_ratio_shape,
    load_image,
    preprocess,
    rescaled_labels,
    rescaled_scores,
    resize_rows,
    slide_logits,
)
from segzoo.zoo.records import Normalization
from tests.conftest import synthetic_state_dict


def _with_pipeline(model, **changes):
    info = model.info
    model.info = dataclasses.replace(info, test_pipeline=dataclasses.replace(info.test_pipeline, **changes))
    return info


@pytest.fixture(scope="module")
def model():
    """MogaNet-XT with synthetic weights, testing at a quarter of the ADE20K scale to stay quick on a CPU."""
    m = segzoo.create_model("moganet_xt_fpn_ade20k")
    m.load_state_dict(synthetic_state_dict("moganet_xt_fpn_ade20k"))
    _with_pipeline(m, scale=(512, 128))
    return m.eval()


@pytest.mark.parametrize(
    "hw, expected",
    [
        ((512, 683), (512, 683)),  # ADE_val_00000001: already fits
        ((256, 256), (512, 512)),  # upscaled until the short edge reaches 512
        ((1000, 500), (1024, 512)),
        ((300, 4000), (154, 2048)),  # the long edge limits: 300 * 2048 / 4000 = 153.6 -> 154
    ],
)
def test_keep_ratio_resize_rule(hw, expected):
    assert keep_ratio_shape(*hw, (2048, 512)) == expected


def test_preprocess_aligns_to_32_and_normalizes():
    info = segzoo.model_info("moganet_s_fpn")
    pixels = np.asarray(Image.new("RGB", (683, 512), (124, 116, 104)))
    x = preprocess(pixels, info.test_pipeline, info.normalization)
    assert x.shape == (1, 3, 512, 704)
    mean, std = torch.tensor(info.normalization.mean), torch.tensor(info.normalization.std)
    torch.testing.assert_close(x[0, :, 100, 100], (torch.tensor([124.0, 116.0, 104.0]) - mean) / std)
    assert preprocess(pixels, info.test_pipeline, info.normalization, ratio=0.5).shape == (1, 3, 256, 352)


def test_load_image_accepts_paths_arrays_and_pil(tmp_path):
    array = np.zeros((40, 50, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "a.png")
    for source in (tmp_path / "a.png", str(tmp_path / "a.png"), array, Image.fromarray(array).convert("L")):
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (50, 40)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (60, 40))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").size == (40, 60)


class _Pointwise(nn.Module):
    """A per-pixel model: sliding windows must reproduce its whole-image output exactly."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x)


def test_slide_windows_cover_like_mmseg():
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append((int(x[0, 0, 0, 0]), int(x[0, 1, 0, 0]), x.shape[2], x.shape[3]))
            return torch.ones(x.shape[0], 2, *x.shape[2:])

    rows, cols = torch.meshgrid(torch.arange(100.0), torch.arange(150.0), indexing="ij")
    image = torch.stack([rows, cols, rows]).unsqueeze(0)
    out = slide_logits(Spy(), image, 2, crop_size=(64, 64), stride=(42, 42))
    # rows: (100 - 64 + 41) // 42 + 1 = 2 windows; cols: (150 - 64 + 41) // 42 + 1 = 4; the last ones end at the border.
    assert seen == [(y, x, 64, 64) for y in (0, 36) for x in (0, 42, 84, 86)]
    torch.testing.assert_close(out, torch.ones(1, 2, 100, 150))


def test_slide_equals_whole_for_a_pointwise_model():
    model = _Pointwise()
    image = torch.randn(2, 3, 77, 130)
    torch.testing.assert_close(slide_logits(model, image, 4, (32, 48), (20, 30)), model(image))


def test_slide_window_covering_the_image_equals_whole(model):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 70, 3), dtype=np.uint8))
    whole = segzoo.predict(model, image, mode="whole", return_scores=True)
    original = _with_pipeline(model, crop_size=(4096, 4096), stride=(2048, 2048))
    try:
        slide = segzoo.predict(model, image, mode="slide", return_scores=True)
    finally:
        model.info = original
    torch.testing.assert_close(slide.scores, whole.scores)
    assert np.array_equal(slide.labels, whole.labels)


def test_aug_test_with_one_scale_and_no_flip_equals_plain_inference(model):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 60, 3), dtype=np.uint8))
    plain = segzoo.predict(model, image, return_scores=True)
    original = _with_pipeline(model, aug_ratios=(1.0,), aug_flip=False)
    try:
        aug = segzoo.predict(model, image, aug_test=True, return_scores=True)
    finally:
        model.info = original
    torch.testing.assert_close(aug.scores, plain.scores.softmax(0))
    assert np.array_equal(aug.labels, plain.labels)


def test_aug_test_averages_probabilities_over_scales_and_flips(model):
    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    original = _with_pipeline(model, aug_ratios=(0.5, 1.0), aug_flip=True)
    try:
        aug = segzoo.predict(model, image, aug_test=True, return_scores=True)
    finally:
        model.info = original
    assert aug.scores.shape == (150, 40, 40)
    torch.testing.assert_close(aug.scores.sum(0), torch.ones(40, 40))


def test_predict_accepts_every_input_kind(model, tmp_path):
    rng = np.random.default_rng(3)
    array = rng.integers(0, 255, (45, 75, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "x.png")
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    results = [
        segzoo.predict(model, array),
        segzoo.predict(model, Image.fromarray(array)),
        segzoo.predict(model, tmp_path / "x.png"),
        segzoo.predict(model, tensor),
    ]
    for r in results:
        assert r.labels.shape == (45, 75) and r.labels.dtype == np.uint8 and r.scores is None
        assert np.array_equal(r.labels, results[0].labels)
    batch = segzoo.predict(model, torch.stack([tensor, tensor]))
    assert len(batch) == 2 and np.array_equal(batch[1].labels, results[0].labels)
    mixed = segzoo.predict(model, [array, np.zeros((30, 40, 3), np.uint8)])
    assert [m.labels.shape for m in mixed] == [(45, 75), (30, 40)]


def test_bf16_autocast_and_channels_last_agree_with_fp32(model):
    image = np.random.default_rng(4).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    ref = segzoo.predict(model, image, return_scores=True)
    fast = segzoo.predict(model, image, channels_last=True, return_scores=True)
    torch.testing.assert_close(fast.scores, ref.scores, rtol=1e-4, atol=1e-4)
    low = segzoo.predict(model, image, amp="bf16", return_scores=True)
    assert (low.labels == ref.labels).mean() > 0.8
    model.to(memory_format=torch.contiguous_format)


def test_predict_by_name_needs_the_weights(monkeypatch):
    monkeypatch.setenv("SEGZOO_OFFLINE", "1")
    with pytest.raises(segzoo.weights.WeightsUnavailableError):
        segzoo.predict("moganet_xt_fpn", np.zeros((40, 40, 3), np.uint8))


def test_bad_mode_is_rejected(model):
    with pytest.raises(ValueError, match="mode"):
        segzoo.predict(model, np.zeros((40, 40, 3), np.uint8), mode="sliding")


# --- labels from the logits a band of rows at a time -------------------------------------------------------------


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(
    "source, size",
    [
        ((7, 9), (97, 131)),
        ((64, 64), (213, 150)),
        ((33, 50), (130, 67)),
        ((128, 96), (100, 30)),
        ((1, 5), (131, 17)),
        ((80, 80), (80, 80)),
    ],
)
def test_resize_rows_equals_the_full_resize_bit_for_bit(source, size, align_corners):
    logits = torch.randn(2, 19, *source, generator=torch.Generator().manual_seed(0)) * 10
    full = F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)
    for band in (1, 7, 64, size[0]):
        rows = [
            resize_rows(logits, size, range(s, min(s + band, size[0])), align_corners) for s in range(0, size[0], band)
        ]
        assert torch.equal(torch.cat(rows, dim=2), full), band


@pytest.mark.parametrize("align_corners", [False, True])
def test_tiled_labels_equal_untiled_labels(align_corners):
    generator = torch.Generator().manual_seed(1)
    views = [(torch.randn(1, 150, 24, 32, generator=generator), False)]
    size = (101, 67)
    expected = rescaled_scores(views, size, align_corners, averaged=False).argmax(1)
    banded = rescaled_labels(views, size, align_corners, averaged=False, band_bytes=1, whole_bytes=0)
    assert torch.equal(banded, expected)
    aug = [
        (torch.randn(1, 150, h, w, generator=generator), flip)
        for h, w in ((12, 16), (24, 32))
        for flip in (False, True)
    ]
    expected = rescaled_scores(aug, size, align_corners, averaged=True).argmax(1)
    banded = rescaled_labels(aug, size, align_corners, averaged=True, band_bytes=3 * 150 * 4 * 67, whole_bytes=0)
    assert torch.equal(banded, expected)


def test_banded_aug_test_keeps_no_two_views_in_memory():
    """Past the whole-image size the aug-test's views wait in temporary files, read back a band's rows at a time:
    a view is released before the next is made, the labels equal the full resize's, and no file stays open."""
    made = []

    def views():
        generator = torch.Generator().manual_seed(3)
        for h, w in ((12, 16), (24, 32)):
            for flip in (False, True):
                assert all(view() is None for view in made), "an earlier view is still held"
                logits = torch.randn(1, 150, h, w, generator=generator) * 4
                made.append(weakref.ref(logits))
                yield logits, flip
                del logits

    size = (101, 67)
    before = len(os.listdir("/proc/self/fd"))
    banded = rescaled_labels(views(), size, False, averaged=True, band_bytes=3 * 150 * 4 * 67, whole_bytes=0)
    assert len(made) == 4 and len(os.listdir("/proc/self/fd")) == before
    kept = []
    for view in views():
        kept.append(view)
        made.clear()
    assert torch.equal(banded, rescaled_scores(kept, size, False, averaged=True).argmax(1))


def test_aug_test_keeps_a_running_sum_and_never_two_views(model):
    """mmseg's aug_test adds each view's probabilities to one sum: a view is released before the next is made."""
    made = []

    def views():
        generator = torch.Generator().manual_seed(0)
        for h, w in ((12, 16), (18, 24), (24, 32)):
            for flip in (False, True):
                assert all(view() is None for view in made), "an earlier view is still held"
                logits = torch.randn(1, 150, h, w, generator=generator)
                made.append(weakref.ref(logits))
                yield logits, flip
                del logits

    size = (61, 47)
    labels = rescaled_labels(views(), size, False, averaged=True)
    assert len(made) == 6
    kept = []
    for view in views():
        kept.append(view)
        made.clear()
    expected = rescaled_scores(kept, size, False, averaged=True).argmax(1)
    assert torch.equal(labels, expected)
    original = _with_pipeline(model, aug_ratios=(0.5, 1.0), aug_flip=True)
    try:
        image = np.random.default_rng(6).integers(0, 255, (45, 70, 3), dtype=np.uint8)
        held = []
        forward = model.forward

        def remembered(x):
            assert all(logits() is None for logits in held), "an earlier view's logits are still held"
            logits = forward(x)
            held.append(weakref.ref(logits))
            return logits

        model.forward = remembered
        segzoo.predict(model, image, aug_test=True)
        assert len(held) == 4
    finally:
        model.info = original
        del model.forward


@pytest.mark.parametrize(
    "name, limit, half_scale_limit",  # twice mmcv's long edge, twice detectron2's cap
    [("moganet_xt_fpn_ade20k", 4096, 2048), ("emanet_r50_coco", 2666, 2 * int(1333 * 0.5))],
)
def test_an_image_too_elongated_for_the_resize_is_a_value_error_naming_it(
    name, limit, half_scale_limit, model, tmp_path
):
    pipeline = segzoo.model_info(name).test_pipeline
    check_aspect_ratio(3, 3 * limit, pipeline)
    check_aspect_ratio(3 * limit, 3, pipeline)
    for height, width in ((3, 3 * limit + 3), (3 * limit + 3, 3)):
        with pytest.raises(ValueError, match=f"the most it takes is {limit}:1"):
            check_aspect_ratio(height, width, pipeline)
    with pytest.raises(ValueError, match=f"the most it takes is {half_scale_limit}:1"):
        check_aspect_ratio(3, 3 * limit, pipeline, (0.5, 1.0))
    path = tmp_path / "strip.png"
    Image.new("RGB", (100_000, 3)).save(path)
    with pytest.raises(ValueError, match=rf"^image {path} \(100000x3 pixels\): too elongated for this model"):
        segzoo.predict(model, path)


def test_predict_labels_equal_the_argmax_of_full_scores(model):
    image = np.random.default_rng(5).integers(0, 255, (67, 101, 3), dtype=np.uint8)
    assert np.array_equal(segzoo.predict(model, image).labels, segzoo.predict(model, image, return_scores=True).labels)
    original = _with_pipeline(model, aug_ratios=(0.5, 1.0), aug_flip=True)
    try:
        aug = segzoo.predict(model, image, aug_test=True)
        full = segzoo.predict(model, image, aug_test=True, return_scores=True)
    finally:
        model.info = original
    assert np.array_equal(aug.labels, full.labels)


# --- detectron2's pipeline and RegionProxy's padded slide --------------------------------------------------------


def test_shortest_edge_pipeline_and_its_final_resize(model):
    """A detectron2-style entry: BGR, shortest-edge resize, the final resize with its own align_corners."""
    info = model.info
    bgr = Normalization(mean=(103.53, 116.28, 123.675), std=(57.375, 57.12, 58.395), channel_order="BGR")
    image = np.random.default_rng(6).integers(0, 255, (45, 75, 3), dtype=np.uint8)
    try:
        for rescale_align_corners, expected_align in ((False, False), (True, True), (None, model.align_corners)):
            model.info = dataclasses.replace(
                info,
                normalization=bgr,
                test_pipeline=dataclasses.replace(
                    info.test_pipeline,
                    resize="shortest_edge",
                    scale=(64, 100),
                    size_divisor=None,
                    rescale_align_corners=rescale_align_corners,
                ),
            )
            x = preprocess(image, model.info.test_pipeline, bgr)
            assert x.shape == (1, 3, 60, 100)  # 64 x 106.7, capped at 100 on the long edge: 60 x 100
            expected = F.interpolate(model(x), size=(45, 75), mode="bilinear", align_corners=expected_align)[0]
            pred = segzoo.predict(model, image, return_scores=True)
            torch.testing.assert_close(pred.scores, expected, rtol=0, atol=0)
            assert np.array_equal(pred.labels, segzoo.predict(model, image).labels)
    finally:
        model.info = info


class _WindowMean(nn.Module):
    """Output depends on the window's mean, so zero padding shows; records each window's shape."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape[2:]))
        x = x.contiguous()
        return x[:, :2] - x.mean(dim=(2, 3), keepdim=True)[:, :2]


@pytest.mark.parametrize("hw, differ", [((30, 50), True), ((50, 20), True), ((64, 96), False), ((45, 70), False)])
def test_padded_slide_windows_differ_only_on_images_smaller_than_the_crop(hw, differ):
    image = torch.rand(1, 3, *hw, generator=torch.Generator().manual_seed(0)) + 1
    shifted, padded = _WindowMean(), _WindowMean()
    shift = slide_logits(shifted, image, 2, (32, 32), (20, 20), windows="shift")
    pad = slide_logits(padded, image, 2, (32, 32), (20, 20), windows="pad")
    assert set(padded.shapes) == {(32, 32)}
    assert (set(shifted.shapes) != {(32, 32)}) == differ
    assert torch.equal(shift, pad) != differ


def test_predict_and_infer_follow_the_entrys_slide_variant(model):
    image = np.random.default_rng(7).integers(0, 255, (40, 90, 3), dtype=np.uint8)
    original = _with_pipeline(model, mode="slide", crop_size=(160, 160), stride=(128, 128))
    try:
        scores = {}
        for windows in ("shift", "pad"):
            _with_pipeline(model, slide_windows=windows)
            x = preprocess(image, model.info.test_pipeline, model.info.normalization)
            expected = F.interpolate(
                slide_logits(model, x, 150, (160, 160), (128, 128), windows),
                size=(40, 90),
                mode="bilinear",
                align_corners=model.align_corners,
            )
            scores[windows] = segzoo.predict(model, image, return_scores=True).scores
            torch.testing.assert_close(scores[windows], expected[0], rtol=0, atol=0)
            pixels = (
                torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float()
            )  # as the evaluation runner passes them
            torch.testing.assert_close(infer_scores(model, pixels)[0], expected[0], rtol=0, atol=0)
            assert torch.equal(infer_labels(model, pixels), expected.argmax(1))
    finally:
        model.info = original
    assert not torch.equal(scores["shift"], scores["pad"])  # the resized image (128 x 288) is lower than the crop (160)


# --- what predict accepts, and clear errors for everything else --------------------------------------------------


@pytest.mark.parametrize(
    "image, error, message",
    [
        (None, TypeError, "image is None; pass a path"),
        (np.zeros((0, 10, 3), np.uint8), ValueError, "empty"),
        (torch.zeros(3, 10, 0), ValueError, "empty"),
        (Image.new("RGB", (0, 0)), ValueError, "empty"),
        (np.random.default_rng(0).random((20, 20, 3)), ValueError, r"float64 with values in \[.*\] \(0-1 values"),
        (np.full((20, 20, 3), 300.0, np.float32), ValueError, r"float32 with values in \[300, 300\]"),
        (np.full((20, 20, 3), -1, np.int16), ValueError, r"int16 with values in \[-1, -1\]"),
        (np.full((20, 20, 3), np.nan, np.float32), ValueError, "nan"),
        (torch.full((3, 20, 20), 0.5), ValueError, r"float32 with values in \[0.5, 0.5\]"),
        (np.zeros((20, 20), np.uint8), ValueError, r"shape \(20, 20\); pass \(H, W, 3\)"),
        (np.zeros((20, 20, 4), np.uint8), ValueError, r"RGBA: a\[..., :3\]"),
        (torch.zeros(4, 20, 20), ValueError, r"shape \(4, 20, 20\)"),
        (np.zeros((20, 20, 3), bool), TypeError, "dtype bool"),
        (42, TypeError, "image is a int; pass a path"),
    ],
    ids=[
        "none",
        "empty-array",
        "empty-tensor",
        "empty-pil",
        "unit-float",
        "above-255",
        "negative",
        "nan",
        "fractional-tensor",
        "grayscale",
        "rgba",
        "4-channel-tensor",
        "bool",
        "int",
    ],
)
def test_predict_rejects_bad_images_with_a_sentence(model, image, error, message):
    with pytest.raises(error, match=message):
        segzoo.predict(model, image)


def test_predict_names_the_bad_image_in_a_list(model):
    with pytest.raises(ValueError, match="image 1 has shape"):
        segzoo.predict(model, [np.zeros((20, 20, 3), np.uint8), np.zeros((20, 20), np.uint8)])


def test_whole_valued_float_and_integer_images_are_uint8_images(model):
    image = np.random.default_rng(8).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    expected = segzoo.predict(model, image).labels
    for same in (image.astype(np.float32), image.astype(np.int64), torch.from_numpy(image).permute(2, 0, 1).double()):
        assert np.array_equal(segzoo.predict(model, same).labels, expected)
