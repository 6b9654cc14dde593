"""Inference as each entry's upstream test pipeline does it: preprocessing, whole/slide modes, aug-test."""
from segzoo.inference.modes import slide_logits
from segzoo.inference.pipeline import keep_ratio_shape, load_image, preprocess
from segzoo.inference.predict import Prediction, predict

__all__ = [
    "Prediction",
    "keep_ratio_shape",
    "load_image",
    "predict",
    "preprocess",
    "slide_logits",
]
