"""Evaluate a model on a dataset folder the way its paper did, on one process or sharded under torchrun."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from segzoo.datasets.folders import SegmentationFolder
from segzoo.evaluation.cityscapes import CityscapesEvaluation
from segzoo.evaluation.metrics import ConfusionMatrix, detectron2_2019_metrics, mmseg_metrics
from segzoo.inference.graphs import use_cuda_graphs
from segzoo.inference.predict import PRECISIONS, Amp, Mode, infer_labels
from segzoo.optimize import compute_dtype
from segzoo.segmentors import EncoderDecoder
from segzoo.visualize import indexed_labels
from segzoo.zoo.records import ModelInfo

Metrics = dict[str, float | list[float]]


class Evaluation(Protocol):
    """What ``evaluate`` streams predictions into: one per metric convention."""

    def update(self, predictions: torch.Tensor, samples: list[dict[str, Any]]) -> None:
        """Count a batch of ``(N, H, W)`` class predictions of ``samples`` (dataset items)."""

    def all_reduce(self) -> None:
        """Sum the counts of all torchrun processes."""

    def compute(self) -> Metrics:
        """Scalar metrics and per-class lists, in percent."""


class ConfusionEvaluation:
    """A streaming confusion matrix of the dataset's labels, scored by one of the matrix conventions."""

    def __init__(
        self, metrics: Callable[[torch.Tensor], Metrics], dataset: SegmentationFolder, device: torch.device
    ) -> None:
        self.metrics = metrics
        self.confusion = ConfusionMatrix(len(dataset.classes), dataset.ignore_index, device=device)

    def update(self, predictions: torch.Tensor, samples: list[dict[str, Any]]) -> None:
        labels = torch.stack([torch.from_numpy(s["label"]) for s in samples]).to(predictions.device)
        self.confusion.update(predictions, labels.long())

    def all_reduce(self) -> None:
        self.confusion.all_reduce()

    def compute(self) -> Metrics:
        return self.metrics(self.confusion.matrix)


# ModelInfo.evaluator -> how its metrics are computed (conventions described in segzoo.evaluation.metrics).
EVALUATORS: dict[str, Callable[[SegmentationFolder, torch.device], Evaluation]] = {
    "mmseg": lambda dataset, device: ConfusionEvaluation(mmseg_metrics, dataset, device),
    "detectron2_2019": lambda dataset, device: ConfusionEvaluation(detectron2_2019_metrics, dataset, device),
    "cityscapes": CityscapesEvaluation,
}


@dataclass
class EvalResult:
    """Measured metrics (percent) next to what the source README reports.

    ``metrics`` holds the convention's scalars under the names the paper's table
    uses, and per-class lists (e.g. ``IoU``, ``Acc``) aligned with ``class_names``.
    ``split`` is the split measured, ``reported_split`` the one the reported
    numbers come from (``test``: the benchmark's evaluation server).
    """

    model: str
    dataset: str
    num_images: int
    settings: dict[str, Any]
    metrics: dict[str, Any]
    reported: dict[str, float]
    class_names: list[str] = field(default_factory=list)
    split: str = "val"
    reported_split: str = "val"

    @property
    def scalars(self) -> dict[str, float]:
        return {k: v for k, v in self.metrics.items() if not isinstance(v, list)}

    @property
    def per_class(self) -> list[dict[str, Any]]:
        columns = {k: v for k, v in self.metrics.items() if isinstance(v, list)}
        return [{"class": name, **{k: v[i] for k, v in columns.items()}} for i, name in enumerate(self.class_names)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "dataset": self.dataset,
            "split": self.split,
            "num_images": self.num_images,
            "settings": self.settings,
            "reported_split": self.reported_split,
            "reported": self.reported,
            "measured": self.scalars,
            "per_class": self.per_class,
        }


def evaluator_for(info: ModelInfo, dataset: SegmentationFolder) -> str:
    """The entry's metric convention, except on another dataset than its own (fine-tuned models): the
    official Cityscapes evaluation needs Cityscapes' annotation files, so mmseg's convention stands in."""
    if info.evaluator == "cityscapes" and dataset.dataset != info.dataset:
        return "mmseg"
    return info.evaluator


def shard_indices(length: int, rank: int, world_size: int) -> range:
    """This process's share of the samples: every ``world_size``-th from ``rank``, none repeated."""
    return range(rank, length, world_size)


def _batches(dataset: SegmentationFolder, indices: range, batch_size: int) -> Iterator[list[dict]]:
    """Consecutive samples of the same image size, at most ``batch_size`` at a time."""
    batch: list[dict] = []
    for i in indices:
        sample = dataset[i]
        if batch and (len(batch) == batch_size or batch[0]["image"].shape != sample["image"].shape):
            yield batch
            batch = []
        batch.append(sample)
    if batch:
        yield batch


@torch.inference_mode()
def evaluate(
    model: EncoderDecoder,
    dataset: SegmentationFolder,
    mode: Mode | None = None,
    aug_test: bool = False,
    limit: int | None = None,
    batch_size: int = 1,
    amp: Amp | None = None,
    progress: bool | None = None,
    save_predictions: Path | None = None,
    cuda_graphs: bool | None = None,
) -> EvalResult:
    """Run ``model`` over ``dataset`` (its first ``limit`` samples) and compute the entry's metrics.

    The metrics follow the entry's ``evaluator`` (see ``EVALUATORS``). Under an
    initialized ``torch.distributed`` process group each process takes its own
    shard and the counts are summed, so the result equals a single process's.
    ``save_predictions`` writes each label map as an indexed PNG named after the
    sample. ``cuda_graphs`` as in :func:`segzoo.predict`: by default the
    forward is replayed from CUDA graphs on a GPU at ``batch_size=1``.
    """
    info = model.require_info()
    if model.num_classes != len(dataset.classes):
        raise ValueError(
            f"{info.name} predicts {model.num_classes} classes, {dataset.dataset} has {len(dataset.classes)}"
        )
    evaluator = evaluator_for(info, dataset)
    device = next(model.parameters()).device
    graphed = use_cuda_graphs(cuda_graphs, device, batch_size)
    distributed = dist.is_available() and dist.is_initialized()
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    indices = shard_indices(count, rank, world_size)
    evaluation = EVALUATORS[evaluator](dataset, device)
    if save_predictions is not None:
        save_predictions.mkdir(parents=True, exist_ok=True)
    with tqdm(
        total=count,
        desc=f"{info.name} on {dataset.dataset}",
        unit="img",
        disable=(rank != 0) or (None if progress is None else not progress),
    ) as bar:
        for batch in _batches(dataset, indices, batch_size):
            pixels = torch.stack([torch.from_numpy(s["image"]).permute(2, 0, 1) for s in batch]).float().to(device)
            predictions = infer_labels(model, pixels, mode, aug_test, amp, cuda_graphs=graphed)
            evaluation.update(predictions, batch)
            if save_predictions is not None:
                for sample, prediction in zip(batch, predictions.cpu().numpy()):
                    indexed_labels(prediction, dataset.palette).save(save_predictions / f"{sample['name']}.png")
            bar.update(len(batch) * world_size)
    evaluation.all_reduce()
    settings = {
        "mode": mode or info.test_pipeline.mode,
        "aug_test": aug_test,
        "amp": amp,
        "precision": next(name for name, dtype in PRECISIONS.items() if dtype == compute_dtype(model)),
        "batch_size": batch_size,
        "cuda_graphs": graphed,
        "limit": limit,
        "world_size": world_size,
        "device": str(device),
        "evaluator": evaluator,
    }
    return EvalResult(
        model=info.name,
        dataset=dataset.dataset,
        num_images=count,
        settings=settings,
        metrics=evaluation.compute(),
        reported=dict(info.metrics) if dataset.dataset == info.dataset else {},
        class_names=[c.strip() for c in dataset.classes],
        split=dataset.split,
        reported_split=info.metrics_split,
    )


def format_report(result: EvalResult) -> str:
    """Reported vs. measured under the convention's metric names and the splits they come from, then per class."""

    def pct(value: float | None) -> str:
        return "n/a" if value is None or math.isnan(value) else f"{value:.2f}"

    measured = result.scalars
    names = list(result.reported) + [k for k in measured if k not in result.reported]
    width = max(len(name) for name in ["metric", *names])
    lines = [
        f"{result.model} on {result.dataset} {result.split}: {result.num_images} images "
        f"({result.settings['mode']}{', aug-test' if result.settings['aug_test'] else ''})"
    ]
    if result.reported_split != result.split:
        server = " (the benchmark's evaluation server)" if result.reported_split == "test" else ""
        lines.append(
            f"reported numbers are from the {result.reported_split} split{server}, "
            f"measured ones from {result.split}: expect them to differ"
        )
    lines += ["", f"{'metric':<{width}} {'reported':>9} {'measured':>9}"]
    for name in names:
        reported = result.reported.get(name)
        lines.append(f"{name:<{width}} {'' if reported is None else reported:>9} {pct(measured.get(name)):>9}")
    per_class = result.per_class
    columns = [k for k in (per_class[0] if per_class else {}) if k != "class"]
    lines += ["", f"{'class':<24}" + "".join(f" {c:>7}" for c in columns)]
    for row in per_class:
        lines.append(f"{row['class'][:24]:<24}" + "".join(f" {pct(row[c]):>7}" for c in columns))
    return "\n".join(lines)
