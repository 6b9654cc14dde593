"""Evaluation: a streaming confusion matrix and the mmseg / detectron2 metric conventions."""
from segzoo.evaluation.metrics import ConfusionMatrix, detectron2_metrics, mmseg_metrics

__all__ = ["ConfusionMatrix", "detectron2_metrics", "mmseg_metrics"]
