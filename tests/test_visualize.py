"""Tests for segzoo.visualize and the ADE20K metadata it is usually paired with."""

import numpy as np
import pytest
from PIL import Image

from segzoo.datasets.ade20k import CLASSES, PALETTE
from segzoo.visualize import LEGEND_MAX_ITEMS, colorize, legend_entries, render_overlay

NAMES = ("sky", "grass", "road")
COLORS = ((10, 20, 250), (0, 200, 0), (128, 128, 128))


def _image(h: int = 40, w: int = 60) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _labels(h: int = 40, w: int = 60) -> np.ndarray:
    labels = np.full((h, w), 255, dtype=np.int64)
    labels[: h // 2] = 0  # sky: top half
    labels[h // 2 :, : w // 4] = 2  # road: a quarter of the bottom half
    return labels


def test_colorize_maps_palette_and_blanks_out_of_range():
    labels = np.array([[0, 1], [2, 255]])
    colors = colorize(labels, COLORS)
    assert colors.dtype == np.uint8 and colors.shape == (2, 2, 3)
    assert colors[0, 0].tolist() == list(COLORS[0])
    assert colors[1, 0].tolist() == list(COLORS[2])
    assert colors[1, 1].tolist() == [0, 0, 0]


def test_output_size_keeps_image_and_adds_legend_on_the_right():
    img = _image()
    out = render_overlay(img, _labels(), NAMES, COLORS)
    assert out.mode == "RGB"
    assert out.width > img.width and out.height >= img.height


def test_legend_extends_canvas_for_tiny_images():
    img = _image(8, 8)
    labels = np.arange(64).reshape(8, 8) % 3
    out = render_overlay(img, labels, NAMES, COLORS)
    assert out.height > img.height


def test_ignored_pixels_keep_original_colors():
    img, labels = _image(), _labels()
    out = np.asarray(render_overlay(img, labels, NAMES, COLORS))[: img.height, : img.width]
    ignored = labels == 255
    np.testing.assert_array_equal(out[ignored], np.asarray(img)[ignored])


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_colored_pixels_are_alpha_blend(alpha):
    img, labels = _image(), _labels()
    out = np.asarray(render_overlay(img, labels, NAMES, COLORS, alpha=alpha)).astype(int)
    out = out[: img.height, : img.width]
    src = np.asarray(img).astype(float)
    for idx in (0, 2):
        mask = labels == idx
        expected = (1 - alpha) * src[mask] + alpha * np.array(COLORS[idx], float)
        assert np.abs(out[mask] - expected).max() <= 0.5 + 1e-3


def test_legend_lists_only_present_classes_by_share():
    entries = legend_entries(_labels(), len(NAMES))
    assert [c for c, _ in entries] == [0, 2]  # grass (1) is absent
    assert entries[0][1] == pytest.approx(0.5)
    assert entries[1][1] == pytest.approx(0.125)


def test_legend_panel_shows_swatches_of_present_classes_only():
    img = _image()
    out = np.asarray(render_overlay(img, _labels(), NAMES, COLORS))
    legend = out[:, img.width :].reshape(-1, 3)
    shown = {tuple(c) for c in np.unique(legend, axis=0)}
    assert COLORS[0] in shown and COLORS[2] in shown
    assert COLORS[1] not in shown


def test_legend_is_capped():
    h, w = 30, 50
    labels = np.arange(h * w).reshape(h, w) % len(CLASSES)
    full = render_overlay(_image(h, w), labels, CLASSES, PALETTE)
    few = render_overlay(_image(h, w), labels % LEGEND_MAX_ITEMS, CLASSES, PALETTE)
    # All 150 classes present: the legend holds LEGEND_MAX_ITEMS rows plus one summary row,
    # so it is barely taller than a legend of exactly LEGEND_MAX_ITEMS classes.
    assert few.height > h
    assert few.height < full.height < 1.2 * few.height


def test_rejects_mismatched_labels():
    with pytest.raises(ValueError):
        render_overlay(_image(), np.zeros((5, 5), dtype=np.int64), NAMES, COLORS)


def test_ade20k_metadata():
    assert len(CLASSES) == len(PALETTE) == 150
    assert len(set(CLASSES)) == 150
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in PALETTE)
    assert (CLASSES[0], PALETTE[0]) == ("wall", (120, 120, 120))
    assert (CLASSES[2], PALETTE[2]) == ("sky", (6, 230, 230))
    assert (CLASSES[-1], PALETTE[-1]) == ("flag", (92, 0, 255))
