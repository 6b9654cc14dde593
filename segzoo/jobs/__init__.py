"""Prediction jobs over many images: folders walked, read ahead, sharded over ``torchrun`` processes, resumable."""

from segzoo.jobs.files import IMAGE_SUFFIXES, ImageTask, UnreadableImageError, plan_tasks, read_image
from segzoo.jobs.folder import Failure, FolderSummary, predict_folder
from segzoo.jobs.outputs import AREA_COLUMNS, ClassMeta, class_areas, label_image, overlay_image, probabilities

__all__ = [
    "AREA_COLUMNS",
    "IMAGE_SUFFIXES",
    "ClassMeta",
    "Failure",
    "FolderSummary",
    "ImageTask",
    "UnreadableImageError",
    "class_areas",
    "label_image",
    "overlay_image",
    "plan_tasks",
    "predict_folder",
    "probabilities",
    "read_image",
]
