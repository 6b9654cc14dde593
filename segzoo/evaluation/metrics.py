"""Streaming confusion matrix and the two metric conventions the published numbers use.

mmsegmentation 0.x and detectron2 agree on pixel and class accuracy but not on
which classes enter the mean IoU: mmseg averages every class seen in either the
prediction or the ground truth, detectron2 only classes present in the ground
truth. Both are computed here from the same matrix so a model can be compared
with the paper it came from.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["ConfusionMatrix", "detectron2_metrics", "mmseg_metrics"]


class ConfusionMatrix:
    """Streaming (num_classes x num_classes) int64 counts, rows = ground truth, cols = prediction, on a torch device.

    Counting stays on the matrix's device (``torch.bincount``): labels are never
    copied to the host, only the scalar result of the range check is.
    """

    def __init__(
        self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Count one batch of integer label maps of any matching shape.

        Pixels whose target is ``ignore_index`` are skipped entirely, their
        prediction included. Any other label outside ``[0, num_classes)`` in
        either tensor raises ``ValueError`` and leaves the matrix unchanged.
        """
        if prediction.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}")
        for name, labels in (("prediction", prediction), ("target", target)):
            if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
                raise TypeError(f"{name} must hold integer labels, got {labels.dtype}")
        n = self.num_classes
        device = self.matrix.device
        pred = prediction.reshape(-1).to(device=device, dtype=torch.int64)
        gt = target.reshape(-1).to(device=device, dtype=torch.int64)
        counted = gt != self.ignore_index
        pred_bad = counted & ((pred < 0) | (pred >= n))
        gt_bad = counted & ((gt < 0) | (gt >= n))
        if bool((pred_bad | gt_bad).any()):
            for name, labels, bad in (("prediction", pred, pred_bad), ("target", gt, gt_bad)):
                if bool(bad.any()):
                    raise ValueError(
                        f"{name} labels {labels[bad].unique()[:10].tolist()} are outside [0, {n}) "
                        f"on pixels not marked with ignore index {self.ignore_index}"
                    )
        # Ignored pixels go to one extra bin that is dropped, instead of a
        # data-dependent boolean mask.
        index = torch.where(counted, gt * n + pred, n * n)
        counts = torch.bincount(index, minlength=n * n + 1)
        self.matrix += counts[: n * n].view(n, n)

    def all_reduce(self) -> None:
        """Sum the counts of all processes in place when torch.distributed is initialised; no-op otherwise.

        The matrix must live where the backend can reduce it (a CUDA device for NCCL).
        """
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)


def _as_float64(matrix: torch.Tensor) -> torch.Tensor:
    """Validate a square confusion matrix and return it in float64."""
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"expected a square confusion matrix, got shape {tuple(matrix.shape)}")
    return matrix.to(torch.float64)


def mmseg_metrics(matrix: torch.Tensor) -> dict[str, float | list[float]]:
    """Metrics as mmsegmentation 0.x ``eval_metrics`` + ``CustomDataset.evaluate`` report them, in percent.

    ``matrix`` is [ground truth, prediction]. Per class IoU = intersect / union and
    Acc = intersect / label area; a class with union 0 has NaN IoU and one with
    no ground-truth pixels NaN Acc. ``mIoU``/``mAcc`` are NaN-ignoring means, so a
    class only predicted (never in the ground truth) counts with IoU 0.
    Unlike mmseg's summary table the values are not rounded to 2 decimals.
    """
    m = _as_float64(matrix)
    intersect = m.diagonal()
    label_area = m.sum(dim=1)
    union = m.sum(dim=0) + label_area - intersect
    iou = intersect / union  # 0 / 0 -> NaN; union >= intersect so no inf
    acc = intersect / label_area
    return {
        "aAcc": 100 * (intersect.sum() / label_area.sum()).item(),
        "mIoU": 100 * torch.nanmean(iou).item(),
        "mAcc": 100 * torch.nanmean(acc).item(),
        "IoU": (100 * iou).tolist(),
        "Acc": (100 * acc).tolist(),
    }


def detectron2_metrics(matrix: torch.Tensor) -> dict[str, float | list[float]]:
    """Metrics as detectron2's ``SemSegEvaluator.evaluate`` computes them, in percent.

    Keys follow EMANet's report: PA, mean PA, mean IoU, FW IoU.

    ``matrix`` is [ground truth, prediction] (detectron2 stores the transpose).
    Only classes with ground-truth pixels are valid, for accuracy and IoU alike
    (detectron2 also asks union > 0, which that implies), so a class that is
    predicted but absent from the ground truth is left out of the mean IoU.
    FW IoU weights each valid IoU by its share of ground-truth pixels.
    """
    m = _as_float64(matrix)
    tp = m.diagonal()
    pos_gt = m.sum(dim=1)
    pos_pred = m.sum(dim=0)
    valid = pos_gt > 0
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=m.device)
    acc = torch.where(valid, tp / pos_gt, nan)
    iou = torch.where(valid, tp / (pos_gt + pos_pred - tp), nan)
    n_valid = valid.sum()
    weights = pos_gt / pos_gt.sum()
    return {
        "PA": 100 * (tp.sum() / pos_gt.sum()).item(),
        "mean PA": 100 * (acc[valid].sum() / n_valid).item(),
        "mean IoU": 100 * (iou[valid].sum() / n_valid).item(),
        "FW IoU": 100 * (iou[valid] * weights[valid]).sum().item(),
        "IoU": (100 * iou).tolist(),
        "Acc": (100 * acc).tolist(),
    }
