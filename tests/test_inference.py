"""The upstream test pipeline: resize rule, normalization, label maps at the original size."""
import numpy as np
import pytest
import torch
from PIL import Image

import segzoo
from segzoo.inference import keep_ratio_shape, load_image, predict_whole, preprocess
from segzoo.zoo import InferencePipeline

ADE = InferencePipeline(scale=(2048, 512), size_divisor=32)


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
    assert keep_ratio_shape(*hw, ADE) == expected


def test_preprocess_aligns_to_32_and_normalizes():
    info = segzoo.model_info("moganet_s_fpn")
    image = Image.new("RGB", (683, 512), (124, 116, 104))
    x = preprocess(image, info)
    assert x.shape == (1, 3, 512, 704)
    expected = (torch.tensor([124.0, 116.0, 104.0]) - torch.tensor(info.normalization.mean)) / torch.tensor(
        info.normalization.std
    )
    torch.testing.assert_close(x[0, :, 100, 100], expected)


def test_load_image_accepts_paths_arrays_and_pil(tmp_path):
    array = np.zeros((40, 50, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "a.png")
    for source in (tmp_path / "a.png", str(tmp_path / "a.png"), array, Image.fromarray(array).convert("L")):
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (50, 40)


def test_predict_whole_returns_labels_at_original_size():
    model = segzoo.create_model("moganet_xt_fpn")
    labels = predict_whole(model, Image.new("RGB", (75, 50), (10, 200, 30)))
    assert labels.shape == (50, 75) and labels.dtype == np.uint8 and labels.max() < 150


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (60, 40))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").size == (40, 60)
