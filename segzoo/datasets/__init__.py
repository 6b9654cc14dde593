"""Dataset metadata: class names and palettes."""

from __future__ import annotations

from collections.abc import Sequence

from segzoo.datasets import ade20k, cityscapes, coco_stuff

_METADATA = {
    "ADE20K": (ade20k.CLASSES, ade20k.PALETTE),
    "Cityscapes": (cityscapes.CLASSES, cityscapes.PALETTE),
    "COCO-Stuff54": (coco_stuff.CLASSES, coco_stuff.PALETTE),
}
# The Hugging Face dataset ids, for model cards.
HF_DATASET_IDS = {"ADE20K": "scene_parse_150"}


def dataset_metadata(dataset: str) -> tuple[Sequence[str], Sequence[tuple[int, int, int]]]:
    """Class names and palette of a dataset named as in ``ModelInfo.dataset``."""
    try:
        return _METADATA[dataset]
    except KeyError:
        raise KeyError(f"no class names for dataset {dataset!r}; known: {sorted(_METADATA)}") from None
