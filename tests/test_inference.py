"""Inference: the upstream test pipeline, whole/slide modes, aug-test, and segzoo.predict's inputs and outputs."""
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import segzoo
from segzoo.inference import keep_ratio_shape, load_image, preprocess, slide_logits
from segzoo.inference.pipeline import to_pixels
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
        ((512, 683), (512, 683)),      # ADE_val_00000001: already fits
        ((256, 256), (512, 512)),      # upscaled until the short edge reaches 512
        ((1000, 500), (1024, 512)),
        ((300, 4000), (154, 2048)),    # the long edge limits: 300 * 2048 / 4000 = 153.6 -> 154
    ],
)
def test_keep_ratio_resize_rule(hw, expected):
    assert keep_ratio_shape(*hw, (2048, 512)) == expected


def test_preprocess_aligns_to_32_and_normalizes():
    info = segzoo.model_info("moganet_s_fpn")
    pixels = to_pixels(Image.new("RGB", (683, 512), (124, 116, 104)))
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
