"""Evaluation: a streaming confusion matrix, the mmseg / detectron2 (2019) conventions, official Cityscapes scores."""

from segzoo.evaluation.metrics import ConfusionMatrix, detectron2_2019_metrics, mmseg_metrics

__all__ = ["ConfusionMatrix", "detectron2_2019_metrics", "mmseg_metrics"]
