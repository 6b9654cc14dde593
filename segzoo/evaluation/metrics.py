"""Streaming confusion matrix and the metric conventions of the published numbers.

Each zoo entry is scored with the convention that produced its paper's table
(``ModelInfo.evaluator``):

- ``mmseg`` (mmsegmentation 0.x ``eval_metrics``): MogaNet, RegionProxy and EurNet.
  aAcc, mIoU, mAcc; every class seen in the prediction or the ground truth enters
  the mean IoU.
- ``detectron2_2019`` (detectron2's ``SemSegEvaluator`` as of late 2019, which
  EMANet's detectron2 project used unchanged): PA, mean PA, mean IoU, FW IoU. A
  class predicted but absent from the ground truth enters the mean IoU with IoU 0,
  as in mmseg; detectron2 changed that in 2022 (such classes are now left out),
  and no entry uses the newer form, so segzoo does not implement it.
- ``cityscapes`` (the official cityscapesScripts evaluation, GloRe): driven by
  :mod:`segzoo.evaluation.cityscapes`, not computed from this matrix.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["ConfusionMatrix", "detectron2_2019_metrics", "mmseg_metrics"]


class ConfusionMatrix:
    """Streaming (num_classes x num_classes) int64 counts, rows = ground truth, cols = prediction, on a torch device.

    Counting stays on the matrix's device (``torch.bincount``): labels are never
    copied to the host, only the scalar result of the range check is.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None) -> None:
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


def detectron2_2019_metrics(matrix: torch.Tensor) -> dict[str, float | list[float]]:
    """Metrics as detectron2's ``SemSegEvaluator.evaluate`` computed them in late 2019, in percent.

    Keys follow EMANet's table: PA, mean PA, mean IoU, FW IoU. ``matrix`` is
    [ground truth, prediction] with ignored pixels already dropped (detectron2
    stored the transpose plus one ignore column that it sliced off).

    - PA: correct pixels / labelled pixels.
    - mean PA: class accuracy averaged over the classes with ground-truth pixels.
    - mean IoU: summed IoU of the classes with ground-truth pixels divided by the
      number of classes in the prediction *or* the ground truth, so a class only
      predicted counts with IoU 0.
    - FW IoU: IoU weighted by each class's share of the labelled pixels.

    With no labelled pixel at all every scalar is NaN (0 / 0), as it was then.
    Per class, ``IoU`` is 0 for a class only predicted and NaN for one absent from
    both, ``Acc`` NaN for a class without ground-truth pixels (2019 reported no
    per-class values; these are the ones its means average).
    """
    m = _as_float64(matrix)
    tp = m.diagonal()
    pos_gt = m.sum(dim=1)
    pos_pred = m.sum(dim=0)
    in_gt = pos_gt > 0
    seen = (pos_gt + pos_pred) > 0
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=m.device)
    acc = torch.where(in_gt, tp / pos_gt, nan)
    iou = torch.where(in_gt, tp / (pos_gt + pos_pred - tp), torch.where(seen, 0.0, nan))
    class_weights = pos_gt / pos_gt.sum()
    return {
        "PA": 100 * (tp.sum() / pos_gt.sum()).item(),
        "mean PA": 100 * (acc[in_gt].sum() / in_gt.sum()).item(),
        "mean IoU": 100 * (iou[seen].sum() / seen.sum()).item(),
        # Classes without ground truth weigh 0; with no labelled pixel the weights are NaN.
        "FW IoU": 100 * (torch.where(in_gt, iou, 0.0) * class_weights).sum().item(),
        "IoU": (100 * iou).tolist(),
        "Acc": (100 * acc).tolist(),
    }
