"""The official Cityscapes pixel-level scores, computed by cityscapesScripts itself while segzoo streams.

The Cityscapes benchmark reports IoU and instance-weighted iIoU over the 19 classes
and the 7 categories. Rather than re-deriving that arithmetic, segzoo feeds each
prediction to ``evalPixelLevelSemanticLabeling.evaluatePair`` (the function the
official script loops over) and asks the same module for the scores. Predictions
are model trainIds mapped to official label ids through cityscapesScripts' label
table and handed over in memory; the ground truth is read by the official code
from the dataset's ``*_gtFine_labelIds.png`` and ``*_gtFine_instanceIds.png``.
Under torchrun each process evaluates its shard and the official confusion matrix
and instance statistics are summed across processes.
"""

from __future__ import annotations

import contextlib
import copy
import io
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

from segzoo.datasets.folders import DatasetError, SegmentationFolder

__all__ = ["CityscapesEvaluation", "SCORES"]

# segzoo's metric name (the GloRe table's column) -> the official scores it averages (createResultDict's keys).
SCORES = {
    "IoU class": "classScores",
    "iIoU class": "classInstScores",
    "IoU category": "categoryScores",
    "iIoU category": "categoryInstScores",
}
_INSTANCE_FIELDS = ("tp", "tpWeighted", "fn", "fnWeighted")


def _official() -> ModuleType:
    """cityscapesScripts' pixel-level evaluation module, with a clear error when the extra is missing."""
    try:
        import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as official  # noqa: PLC0415 (the optional cityscapes extra: imported when used)
    except ImportError as e:
        raise ImportError(
            'the "cityscapes" evaluator runs the official cityscapesScripts evaluation: '
            'pip install "segzoo[cityscapes]"'
        ) from e
    if not hasattr(official.np, "in1d"):
        official.np = _NumpyWithIn1d()
    return official


class _NumpyWithIn1d:
    """NumPy for the official module, plus ``in1d``, which it calls and NumPy 2.4 removed.

    cityscapesScripts 2.3.0 still uses ``np.in1d`` for the category masks of the
    instance scores; ``isin`` on the flattened array is its documented replacement.
    Only the official module's own ``np`` is swapped, NumPy itself is untouched.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    @staticmethod
    def in1d(values: np.ndarray, test_values: Any, invert: bool = False) -> np.ndarray:
        return np.isin(np.ravel(values), test_values, invert=invert)


@contextlib.contextmanager
def _official_errors(what: str):
    """Turn the official code's print-and-``sys.exit`` failures into a DatasetError naming ``what``."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    except SystemExit:
        message = printed.getvalue().strip() or "it exited"
        raise DatasetError(f"cityscapesScripts could not evaluate {what}: {message}") from None


class CityscapesEvaluation:
    """Official Cityscapes scores of trainId predictions, accumulated image by image.

    ``compute`` returns, in percent, "IoU class", "iIoU class", "IoU category" and
    "iIoU category" (averages over the valid entries, as the benchmark reports
    them) and per-class "IoU" and "iIoU" lists in trainId order (iIoU is NaN for
    classes without instances).
    """

    def __init__(self, dataset: SegmentationFolder, device: torch.device | str = "cpu") -> None:
        if dataset.dataset != "Cityscapes":
            raise ValueError(f"the official Cityscapes evaluation needs the Cityscapes dataset, got {dataset.dataset}")
        self._official = _official()
        # Failing here, before any inference, when the official ground truth is not unzipped.
        dataset.annotation_files("labelIds")
        dataset.annotation_files("instanceIds")
        args = copy.copy(self._official.args)  # the module's own defaults, e.g. the average instance sizes
        args.quiet, args.colorized, args.JSONOutput = True, False, False
        args.evalInstLevelScore, args.evalPixelAccuracy = True, False
        self._args = args
        self._matrix = self._official.generateMatrix(args)  # also lists args.evalLabels
        self._instances = self._official.generateInstanceStats(args)
        id_of_train_id = {train_id: label.id for train_id, label in self._official.trainId2label.items()}
        self._train_ids = range(len(dataset.classes))
        self._to_label_id = torch.tensor([id_of_train_id[t] for t in self._train_ids], dtype=torch.uint8, device=device)
        self._device = torch.device(device)

    def update(self, predictions: torch.Tensor, samples: list[dict[str, Any]]) -> None:
        """Score ``(N, H, W)`` trainId predictions against the official ground truth of ``samples``."""
        label_ids = self._to_label_id[predictions.long()].cpu().numpy()
        for labels, sample in zip(label_ids, samples):
            ground_truth = sample["annotations"]["labelIds"]
            with Image.open(ground_truth) as gt:
                if gt.size != (labels.shape[1], labels.shape[0]):
                    raise DatasetError(
                        f"{ground_truth} is {gt.size[0]}x{gt.size[1]} but the prediction for "
                        f"{sample['name']} is {labels.shape[1]}x{labels.shape[0]}"
                    )
            # The official code opens predictions with PIL; an in-memory 8-bit PGM is lossless and
            # about 35 times quicker to write than even an uncompressed PNG.
            prediction = io.BytesIO()
            Image.fromarray(labels).save(prediction, format="PPM")
            prediction.seek(0)
            with _official_errors(str(ground_truth)):
                self._official.evaluatePair(
                    prediction, str(ground_truth), self._matrix, self._instances, {}, self._args
                )

    def all_reduce(self) -> None:
        """Sum the confusion matrix and instance statistics of all processes; no-op without a process group."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        matrix = torch.from_numpy(self._matrix.astype(np.int64)).to(self._device)
        dist.all_reduce(matrix, op=dist.ReduceOp.SUM)
        self._matrix[...] = matrix.cpu().numpy()
        fields = [
            (entry, name)
            for group in ("classes", "categories")
            for entry in self._instances[group].values()
            for name in _INSTANCE_FIELDS
        ]
        values = torch.tensor([entry[name] for entry, name in fields], dtype=torch.float64, device=self._device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        for (entry, name), value in zip(fields, values.tolist()):
            entry[name] = value

    def compute(self) -> dict[str, float | list[float]]:
        """The four benchmark scores and the per-class IoU and iIoU, in percent."""
        official, args, matrix, instances = self._official, self._args, self._matrix, self._instances
        labels, categories = args.evalLabels, official.category2labels
        scores = {
            "classScores": {official.id2label[i].name: official.getIouScoreForLabel(i, matrix, args) for i in labels},
            "classInstScores": {
                official.id2label[i].name: official.getInstanceIouScoreForLabel(i, matrix, instances, args)
                for i in labels
            },
            "categoryScores": {c: official.getIouScoreForCategory(c, matrix, args) for c in categories},
            "categoryInstScores": {
                c: official.getInstanceIouScoreForCategory(c, matrix, instances, args) for c in categories
            },
        }
        names = [official.trainId2label[t].name for t in self._train_ids]
        result: dict[str, float | list[float]] = {
            metric: 100 * official.getScoreAverage(scores[key], args) for metric, key in SCORES.items()
        }
        result["IoU"] = [100 * scores["classScores"][name] for name in names]
        result["iIoU"] = [100 * scores["classInstScores"][name] for name in names]
        return result
