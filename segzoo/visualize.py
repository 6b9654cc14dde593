"""Turn label maps into color overlays with a class legend, for demos and quick inspection."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LEGEND_MAX_ITEMS = 20
_PAD = 8  # margin around the legend and between its rows' parts, in pixels
_SWATCH = 12  # side of a color swatch, in pixels


def colorize(labels: np.ndarray, palette: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """Map an (H, W) array of class indices to an (H, W, 3) uint8 image via `palette`.

    Indices outside ``[0, len(palette))`` (e.g. the 255 "ignore" value) come out black.
    """
    lut = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    labels = np.asarray(labels)
    valid = (labels >= 0) & (labels < len(lut))
    colors = np.zeros((*labels.shape, 3), dtype=np.uint8)
    colors[valid] = lut[labels[valid]]
    return colors


def legend_entries(labels: np.ndarray, num_classes: int) -> list[tuple[int, float]]:
    """List the classes present in `labels` as (class index, share of all pixels), largest first.

    Ties are broken by class index so the order is deterministic.
    """
    labels = np.asarray(labels)
    valid = labels[(labels >= 0) & (labels < num_classes)].astype(np.int64)
    counts = np.bincount(valid, minlength=num_classes)
    present = np.flatnonzero(counts)
    order = sorted(present, key=lambda c: (-counts[c], c))
    return [(int(c), counts[c] / labels.size) for c in order]


def render_overlay(
    image: Image.Image,
    labels: np.ndarray,
    class_names: Sequence[str],
    palette: Sequence[tuple[int, int, int]],
    alpha: float = 0.5,
) -> Image.Image:
    """Blend class colors over `image` and append a legend of the classes present on the right.

    `labels` is an (H, W) array of class indices at the image's size; pixels whose index is
    outside ``[0, len(class_names))`` keep the original image colors. Colored pixels become
    ``round((1 - alpha) * image + alpha * color)``. The legend lists at most
    ``LEGEND_MAX_ITEMS`` classes by descending pixel share (swatch, name, percentage) and
    summarizes the rest in one line; the canvas grows downwards if the legend needs it.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if len(palette) < len(class_names):
        raise ValueError(f"palette has {len(palette)} colors for {len(class_names)} classes")
    rgb = image.convert("RGB")
    labels = np.asarray(labels)
    if labels.shape != (rgb.height, rgb.width):
        raise ValueError(f"labels shape {labels.shape} does not match image size {(rgb.height, rgb.width)} (H, W)")

    base = np.asarray(rgb, dtype=np.float32)
    colors = colorize(labels, palette).astype(np.float32)
    valid = ((labels >= 0) & (labels < len(class_names)))[..., None]
    blended = np.where(valid, (1.0 - alpha) * base + alpha * colors, base)
    overlay = Image.fromarray(np.round(blended).astype(np.uint8), "RGB")

    entries = legend_entries(labels, len(class_names))
    rows: list[tuple[tuple[int, int, int] | None, str, float]] = [
        (tuple(palette[c]), class_names[c].strip(), share) for c, share in entries
    ]
    if len(rows) > LEGEND_MAX_ITEMS:
        hidden = rows[LEGEND_MAX_ITEMS:]
        rest = (None, f"+{len(hidden)} more", sum(share for _, _, share in hidden))
        rows = rows[:LEGEND_MAX_ITEMS] + [rest]
    return _append_legend(overlay, rows)


def _append_legend(overlay: Image.Image, rows: list[tuple[tuple[int, int, int] | None, str, float]]) -> Image.Image:
    """Place `overlay` on a white canvas with a legend (swatch, name, percentage) on its right."""
    font = ImageFont.load_default()
    percents = [f"{100 * share:.1f}%" for _, _, share in rows]
    name_w = max((font.getlength(name) for _, name, _ in rows), default=0)
    pct_w = max((font.getlength(pct) for pct in percents), default=0)
    row_h = max(_SWATCH, font.getbbox("Ag%")[3]) + _PAD // 2
    legend_w = int(np.ceil(_PAD + _SWATCH + _PAD + name_w + _PAD + pct_w + _PAD))
    legend_h = 2 * _PAD + row_h * len(rows)

    canvas = Image.new("RGB", (overlay.width + legend_w, max(overlay.height, legend_h)), "white")
    canvas.paste(overlay, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0, x_right = overlay.width + _PAD, canvas.width - _PAD
    for i, ((color, name, _), pct) in enumerate(zip(rows, percents)):
        y = _PAD + i * row_h
        if color is not None:
            draw.rectangle([x0, y, x0 + _SWATCH - 1, y + _SWATCH - 1], fill=color, outline="black")
        draw.text((x0 + _SWATCH + _PAD, y), name, fill="black", font=font)
        draw.text((x_right - font.getlength(pct), y), pct, fill="black", font=font)
    return canvas


def indexed_labels(labels: np.ndarray, palette: Sequence[tuple[int, int, int]]) -> Image.Image:
    """An 8-bit palette PNG image of class indices: the values are the classes, the colors the dataset's."""
    labels = np.asarray(labels)
    if labels.max(initial=0) > 255 or labels.min(initial=0) < 0:
        raise ValueError("indexed PNGs hold class indices 0-255")
    image = Image.fromarray(labels.astype(np.uint8), "P")
    flat = [c for color in palette for c in color]
    image.putpalette(flat + [0] * (768 - len(flat)))
    return image
