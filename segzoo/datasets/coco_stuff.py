"""COCO-Stuff54: the stuff-only semantic targets of COCO panoptic, as EMANet evaluates them.

These are detectron2's panoptic-FPN semantic labels: class 0 is every "thing" pixel (the 80
thing categories merged), classes 1..53 are the 53 panoptic stuff categories in ascending
category id, and 255 marks pixels of no segment. Names drop the "-other"/"-merged" suffixes;
colors are the panopticapi category colors, with detectron2's color for "things".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# The stuff categories of panoptic_coco_categories.json: (category id, name, color).
STUFF_CATEGORIES: tuple[tuple[int, str, tuple[int, int, int]], ...] = (
    (92, "banner", (255, 255, 128)),
    (93, "blanket", (147, 211, 203)),
    (95, "bridge", (150, 100, 100)),
    (100, "cardboard", (168, 171, 172)),
    (107, "counter", (146, 112, 198)),
    (109, "curtain", (210, 170, 100)),
    (112, "door-stuff", (92, 136, 89)),
    (118, "floor-wood", (218, 88, 184)),
    (119, "flower", (241, 129, 0)),
    (122, "fruit", (217, 17, 255)),
    (125, "gravel", (124, 74, 181)),
    (128, "house", (70, 70, 70)),
    (130, "light", (255, 228, 255)),
    (133, "mirror-stuff", (154, 208, 0)),
    (138, "net", (193, 0, 92)),
    (141, "pillow", (76, 91, 113)),
    (144, "platform", (255, 180, 195)),
    (145, "playingfield", (106, 154, 176)),
    (147, "railroad", (230, 150, 140)),
    (148, "river", (60, 143, 255)),
    (149, "road", (128, 64, 128)),
    (151, "roof", (92, 82, 55)),
    (154, "sand", (254, 212, 124)),
    (155, "sea", (73, 77, 174)),
    (156, "shelf", (255, 160, 98)),
    (159, "snow", (255, 255, 255)),
    (161, "stairs", (104, 84, 109)),
    (166, "tent", (169, 164, 131)),
    (168, "towel", (225, 199, 255)),
    (171, "wall-brick", (137, 54, 74)),
    (175, "wall-stone", (135, 158, 223)),
    (176, "wall-tile", (7, 246, 231)),
    (177, "wall-wood", (107, 255, 200)),
    (178, "water-other", (58, 41, 149)),
    (180, "window-blind", (183, 121, 142)),
    (181, "window-other", (255, 73, 97)),
    (184, "tree-merged", (107, 142, 35)),
    (185, "fence-merged", (190, 153, 153)),
    (186, "ceiling-merged", (146, 139, 141)),
    (187, "sky-other-merged", (70, 130, 180)),
    (188, "cabinet-merged", (134, 199, 156)),
    (189, "table-merged", (209, 226, 140)),
    (190, "floor-other-merged", (96, 36, 108)),
    (191, "pavement-merged", (96, 96, 96)),
    (192, "mountain-merged", (64, 170, 64)),
    (193, "grass-merged", (152, 251, 152)),
    (194, "dirt-merged", (208, 229, 228)),
    (195, "paper-merged", (206, 186, 171)),
    (196, "food-other-merged", (152, 161, 64)),
    (197, "building-other-merged", (116, 112, 0)),
    (198, "rock-merged", (0, 114, 143)),
    (199, "wall-other-merged", (102, 102, 156)),
    (200, "rug-merged", (250, 141, 255)),
)

CLASSES: tuple[str, ...] = ("things",) + tuple(
    name.replace("-other", "").replace("-merged", "") for _, name, _ in STUFF_CATEGORIES
)
PALETTE: tuple[tuple[int, int, int], ...] = ((82, 18, 128),) + tuple(color for _, _, color in STUFF_CATEGORIES)

IGNORE_INDEX = 255


def _class_of_category(categories: Sequence[Mapping]) -> dict[int, int]:
    """Category id -> semantic class: things to 0, stuff to 1.. in ascending category id."""
    stuff = sorted(c["id"] for c in categories if not c["isthing"])
    if len(stuff) >= IGNORE_INDEX:
        raise ValueError(f"{len(stuff)} stuff categories do not fit in uint8 labels beside 0 and 255")
    mapping = {c["id"]: 0 for c in categories if c["isthing"]}
    mapping.update((cat_id, i + 1) for i, cat_id in enumerate(stuff))
    return mapping


def panoptic_to_semantic(
    panoptic_rgb: np.ndarray, segments: Sequence[Mapping], categories: Sequence[Mapping]
) -> np.ndarray:
    """The (H, W) uint8 stuff-only semantic label of one COCO panoptic annotation.

    ``panoptic_rgb`` is the annotation PNG (segment id = R + 256 G + 256² B), ``segments`` its
    ``segments_info`` and ``categories`` the panoptic json's ``categories``. Pixels of no listed
    segment become 255.
    """
    if panoptic_rgb.ndim != 3 or panoptic_rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) panoptic PNG, got shape {panoptic_rgb.shape}")
    rgb = panoptic_rgb.astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
    to_class = _class_of_category(categories)
    seg_class = {}
    for seg in segments:
        try:
            seg_class[seg["id"]] = to_class[seg["category_id"]]
        except KeyError:
            raise ValueError(f"segment {seg['id']} has unknown category {seg['category_id']}") from None
    out = np.full(ids.shape, IGNORE_INDEX, dtype=np.uint8)
    if seg_class:
        keys = np.array(sorted(seg_class), dtype=np.int64)
        pos = np.searchsorted(keys, ids).clip(max=len(keys) - 1)
        listed = keys[pos] == ids
        out[listed] = np.array([seg_class[k] for k in keys.tolist()], dtype=np.uint8)[pos[listed]]
    return out
