"""Inference as each entry's upstream test pipeline does it: preprocessing, whole/slide modes, aug-test."""

from segzoo.inference.modes import slide_logits
from segzoo.inference.pipeline import (
    check_aspect_ratio,
    keep_ratio_shape,
    load_image,
    preprocess,
    resize_image,
    shortest_edge_shape,
)
from segzoo.inference.predict import (
    Prediction,
    PreparedImage,
    infer_labels,
    infer_scores,
    predict,
    predict_prepared,
    prepare_image,
)
from segzoo.inference.rescale import rescaled_labels, rescaled_scores, resize_rows

__all__ = [
    "Prediction",
    "PreparedImage",
    "check_aspect_ratio",
    "infer_labels",
    "infer_scores",
    "keep_ratio_shape",
    "load_image",
    "predict",
    "predict_prepared",
    "prepare_image",
    "preprocess",
    "rescaled_labels",
    "rescaled_scores",
    "resize_image",
    "resize_rows",
    "shortest_edge_shape",
    "slide_logits",
]
