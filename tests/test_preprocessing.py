"""Preprocessing equals what the upstream test pipelines feed their models, value for value."""

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import segzoo
from segzoo.inference import keep_ratio_shape, load_image, preprocess, resize_image, shortest_edge_shape
from segzoo.zoo.records import Normalization

SAMPLES = Path(__file__).resolve().parents[1] / ".." / "shared" / "samples"
# cv2.resize(INTER_LINEAR) outputs made once with OpenCV 4.14.0.94, the OpenCV of the upstream pipelines' era;
# ``python tests/test_preprocessing.py`` writes them again (it refuses to under another major version).
OPENCV4_RESIZES = Path(__file__).parent / "fixtures" / "opencv4_inter_linear.npz"
MOGANET = segzoo.model_info("moganet_s_fpn_ade20k")
# detectron2's test resize as EMANet configures it for Cityscapes, with its BGR mean/std.
DETECTRON2 = dataclasses.replace(MOGANET.test_pipeline, resize="shortest_edge", scale=(1024, 2048), size_divisor=None)
BGR = Normalization(mean=(103.53, 116.28, 123.675), std=(57.375, 57.12, 58.395), channel_order="BGR")


def synthetic_photo(height: int, width: int) -> np.ndarray:
    """Smooth gradients, hard edges and sensor noise: the structures a bilinear resize rounds differently."""
    rng = np.random.default_rng(height * 7919 + width)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([128 + 100 * np.sin(x / 37 + c) * np.cos(y / 23 - c) for c in range(3)], axis=-1)
    base[(x // 40 + y // 40) % 2 == 0] *= 0.6
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def photos() -> list[tuple[str, np.ndarray]]:
    images = [
        (f"synthetic {h}x{w}", synthetic_photo(h, w)) for h, w in ((512, 683), (375, 500), (1080, 1920), (97, 131))
    ]
    for path in sorted(SAMPLES.glob("*.png")) + sorted(SAMPLES.glob("*.jpg")):
        photo = np.asarray(load_image(path))
        images.append((path.name, photo))
        for h, w in ((300, 451), (1201, 1603), (2000, 700)):
            images.append((f"{path.name} at {h}x{w}", cv2.resize(photo, (w, h), interpolation=cv2.INTER_CUBIC)))
    return images


def mmcv_test_resize(image: np.ndarray, scale: tuple[int, int], divisor: int) -> np.ndarray:
    """mmcv ``imrescale`` then MogaNet's ``AlignResize``, with their size arithmetic written out here."""
    h, w = image.shape[:2]
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    new_w, new_h = int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)
    image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    align_h, align_w = int(np.ceil(new_h / divisor)) * divisor, int(np.ceil(new_w / divisor)) * divisor
    return cv2.resize(image, (align_w, align_h), interpolation=cv2.INTER_LINEAR)


def mmcv_normalize(image: np.ndarray, normalization: Normalization) -> np.ndarray:
    """mmcv's ``imnormalize`` as it computed on the OpenCV 4 its models were tested with, written out in NumPy.

    ``cv2.subtract`` turned the float64 mean into a float32 scalar and subtracted in float32; ``cv2.multiply``
    multiplied by the float64 reciprocal of the float32 std in float64 and rounded to float32. OpenCV 5 changed
    that arithmetic (a float32 ulp on about a quarter of the values), so the reference no longer calls OpenCV.
    """
    difference = image.astype(np.float32) - np.asarray(normalization.mean, dtype=np.float32)
    inverse_std = 1.0 / np.asarray(normalization.std, dtype=np.float32).astype(np.float64)
    return (difference.astype(np.float64) * inverse_std).astype(np.float32)


def pattern_image(height: int, width: int) -> np.ndarray:
    """A uint8 image from integer arithmetic alone (no random generator whose stream could change)."""
    y, x, c = np.mgrid[0:height, 0:width, 0:3]
    return ((x * 37 + y * 91 + c * 53) ^ (x * y + 7 * c)).astype(np.uint8)


def opencv_resize_cases() -> dict[str, np.ndarray]:
    """The installed OpenCV's bilinear resizes of a pattern image, one-step and as mmcv + ``AlignResize`` do."""
    image = pattern_image(61, 83)
    align = dataclasses.replace(MOGANET.test_pipeline, scale=(256, 64), size_divisor=32)
    return {
        "down_23x31": cv2.resize(image, (31, 23), interpolation=cv2.INTER_LINEAR),
        "down_half_32x48": cv2.resize(pattern_image(64, 96), (48, 32), interpolation=cv2.INTER_LINEAR),
        "down_75x100": cv2.resize(pattern_image(240, 320), (100, 75), interpolation=cv2.INTER_LINEAR),
        "up_100x137": cv2.resize(image, (137, 100), interpolation=cv2.INTER_LINEAR),
        "keep_ratio_then_align_to_32": resize_image(image, align),  # 61x83 -> 64x87 -> 64x96
    }


@pytest.mark.parametrize("case", sorted(opencv_resize_cases()))
def test_installed_opencv_resizes_as_opencv_4_did(case):
    with np.load(OPENCV4_RESIZES) as stored:
        expected = stored[case]
    resized = opencv_resize_cases()[case]
    assert resized.shape == expected.shape, case
    differ = int(np.count_nonzero(resized != expected))
    assert differ == 0, (
        f"OpenCV {cv2.__version__} resizes '{case}' differently from OpenCV 4 ({differ} of {expected.size} values): "
        "model inputs would no longer equal what the upstream pipelines fed their models; bound "
        "opencv-python-headless below this version in setup.cfg (with the reason) until segzoo resizes on its own"
    )


@pytest.mark.parametrize("name, photo", photos(), ids=lambda v: v if isinstance(v, str) else "")
def test_keep_ratio_and_align_resize_equal_opencv_on_photos(name, photo):
    pipeline = MOGANET.test_pipeline
    for ratio in (1.0, 0.75, 1.75):
        scale = (int(pipeline.scale[0] * ratio), int(pipeline.scale[1] * ratio))
        expected = mmcv_test_resize(photo, scale, pipeline.size_divisor)
        assert np.array_equal(resize_image(photo, pipeline, ratio), expected), (name, ratio)


def test_the_float_resize_segzoo_used_before_is_not_exact():
    photo = synthetic_photo(512, 683)
    pixels = torch.from_numpy(photo).permute(2, 0, 1).unsqueeze(0).float()
    size = keep_ratio_shape(512, 683, (1024, 256))
    rounded = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False).round()
    expected = cv2.resize(photo, size[::-1], interpolation=cv2.INTER_LINEAR)
    assert not np.array_equal(rounded[0].permute(1, 2, 0).to(torch.uint8).numpy(), expected)
    assert np.array_equal(
        resize_image(photo, dataclasses.replace(MOGANET.test_pipeline, scale=(1024, 256), size_divisor=None)), expected
    )


@pytest.mark.parametrize("flip", [False, True])
def test_model_input_equals_mmseg_pipeline_bit_for_bit(flip):
    photo = synthetic_photo(375, 500)
    resized = mmcv_test_resize(photo, (1536, 384), 32)
    expected = mmcv_normalize(resized[:, ::-1] if flip else resized, MOGANET.normalization)
    x = preprocess(photo, MOGANET.test_pipeline, MOGANET.normalization, ratio=0.75, flip=flip)
    assert torch.equal(x[0].permute(1, 2, 0), torch.from_numpy(expected))


@pytest.mark.parametrize(
    "hw, scale, expected",
    [
        ((1024, 2048), (1024, 2048), (1024, 2048)),  # Cityscapes: unchanged
        ((480, 640), (800, 1333), (800, 1067)),  # 640 * 800 / 480 = 1066.67
        ((640, 480), (800, 1333), (1067, 800)),
        ((500, 2000), (800, 1333), (333, 1333)),  # capped: 800 x 3200 * 1333 / 3200 = 333.25 x 1333
        ((427, 427), (800, 1333), (800, 800)),
    ],
)
def test_shortest_edge_size_rule(hw, scale, expected):
    assert shortest_edge_shape(*hw, *scale) == expected


def test_shortest_edge_resizes_with_pil_and_divides_by_std_in_bgr():
    photo = synthetic_photo(375, 500)
    pipeline = dataclasses.replace(DETECTRON2, scale=(600, 1000))
    bgr = np.asarray(Image.fromarray(np.ascontiguousarray(photo[:, :, ::-1])).resize((800, 600), Image.BILINEAR))
    expected = (
        torch.from_numpy(bgr.astype(np.float32)).permute(2, 0, 1) - torch.tensor(BGR.mean).view(3, 1, 1)
    ) / torch.tensor(BGR.std).view(3, 1, 1)
    assert torch.equal(preprocess(photo, pipeline, BGR)[0], expected)


def test_detectron2_2019_reader_ignores_exif_orientation(tmp_path):
    image = Image.new("RGB", (60, 40))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg", MOGANET.test_pipeline).size == (40, 60)
    assert load_image(tmp_path / "rotated.jpg", DETECTRON2).size == (60, 40)


def test_opencv_and_pil_decode_jpeg_alike(tmp_path):
    photo = synthetic_photo(97, 131)
    Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=85)
    decoded = cv2.imread(str(tmp_path / "photo.jpg"), cv2.IMREAD_COLOR)[:, :, ::-1]
    assert np.array_equal(np.asarray(load_image(tmp_path / "photo.jpg")), decoded)


def _odd_mode_files(folder: Path) -> dict[str, Path]:
    """Images whose PIL ``convert("RGB")`` differs from OpenCV's decoding: 16-bit greys and CMYK JPEGs."""
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 2**16, (37, 53), dtype=np.uint16)
    cv2.imwrite(str(folder / "grey16.png"), grey)
    cv2.imwrite(str(folder / "colour16.png"), rng.integers(0, 2**16, (37, 53, 3), dtype=np.uint16))
    Image.fromarray(synthetic_photo(41, 59)).convert("CMYK").save(folder / "cmyk.jpg", quality=90)
    rotated = Image.fromarray(synthetic_photo(41, 59)).convert("CMYK")
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(folder / "cmyk_rotated.jpg", quality=90, exif=exif)
    return {path.name: path for path in folder.iterdir()}


def test_mmseg_entries_read_16_bit_and_cmyk_files_as_opencv_does(tmp_path):
    for name, path in _odd_mode_files(tmp_path).items():
        expected = cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]
        for pipeline in (None, MOGANET.test_pipeline):
            assert np.array_equal(np.asarray(load_image(path, pipeline)), expected), name
    with Image.open(tmp_path / "grey16.png") as grey:
        assert grey.mode == "I;16" and (np.asarray(grey.convert("RGB")) == 255).mean() > 0.9  # what PIL would give


def test_emanet_reads_16_bit_and_cmyk_files_as_detectron2_2019_did(tmp_path):
    for name, path in _odd_mode_files(tmp_path).items():
        with Image.open(path) as image:
            expected = np.asarray(image.convert("RGB"))  # detectron2's read_image: PIL, no EXIF orientation
        assert np.array_equal(np.asarray(load_image(path, DETECTRON2)), expected), name


if __name__ == "__main__":
    if not cv2.__version__.startswith("4."):
        raise SystemExit(f"the fixture records OpenCV 4's resize; this is OpenCV {cv2.__version__}")
    np.savez_compressed(OPENCV4_RESIZES, **opencv_resize_cases())
    print(f"wrote {OPENCV4_RESIZES} with OpenCV {cv2.__version__}")
