"""Evaluate a model on a dataset folder the way its paper did, on one process or sharded under torchrun."""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from segzoo.datasets.folders import SegmentationFolder
from segzoo.evaluation.metrics import ConfusionMatrix, detectron2_metrics, mmseg_metrics
from segzoo.inference.predict import Amp, Mode, infer_scores
from segzoo.segmentors import EncoderDecoder
from segzoo.visualize import indexed_labels

_METRICS = {"mmseg": mmseg_metrics, "detectron2_2019": detectron2_metrics}


@dataclass
class EvalResult:
    """Measured metrics (percent) next to what the source README reports."""

    model: str
    dataset: str
    num_images: int
    settings: dict[str, Any]
    metrics: dict[str, Any]
    reported: dict[str, float]
    class_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        scalars = {k: v for k, v in self.metrics.items() if not isinstance(v, list)}
        per_class = [
            {"class": name, "IoU": self.metrics["IoU"][i], "Acc": self.metrics["Acc"][i]}
            for i, name in enumerate(self.class_names)
        ]
        return {
            "model": self.model, "dataset": self.dataset, "num_images": self.num_images,
            "settings": self.settings, "reported": self.reported, "measured": scalars, "per_class": per_class,
        }


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
) -> EvalResult:
    """Run ``model`` over ``dataset`` (its first ``limit`` samples) and compute the entry's metrics.

    Under an initialized ``torch.distributed`` process group each process
    takes its own shard and the confusion matrices are summed, so the result
    equals a single process's. ``save_predictions`` writes each label map as an
    indexed PNG named after the sample.
    """
    info = model.require_info()
    if info.num_classes != len(dataset.classes) or model.num_classes != len(dataset.classes):
        raise ValueError(f"{info.name} predicts {model.num_classes} classes, {dataset.dataset} has {len(dataset.classes)}")
    device = next(model.parameters()).device
    distributed = dist.is_available() and dist.is_initialized()
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    indices = shard_indices(count, rank, world_size)
    confusion = ConfusionMatrix(len(dataset.classes), dataset.ignore_index, device=device)
    if save_predictions is not None:
        save_predictions.mkdir(parents=True, exist_ok=True)
    with tqdm(total=count, desc=f"{info.name} on {dataset.dataset}", unit="img",
              disable=(rank != 0) or (None if progress is None else not progress)) as bar:
        for batch in _batches(dataset, indices, batch_size):
            pixels = torch.stack([torch.from_numpy(s["image"]).permute(2, 0, 1) for s in batch]).float().to(device)
            predictions = infer_scores(model, pixels, mode, aug_test, amp).argmax(dim=1)
            labels = torch.stack([torch.from_numpy(s["label"]) for s in batch]).to(device)
            confusion.update(predictions, labels.long())
            if save_predictions is not None:
                for sample, prediction in zip(batch, predictions.cpu().numpy()):
                    indexed_labels(prediction, dataset.palette).save(save_predictions / f"{sample['name']}.png")
            bar.update(len(batch) * world_size)
    confusion.all_reduce()
    settings = {
        "mode": mode or info.test_pipeline.mode, "aug_test": aug_test, "amp": amp, "batch_size": batch_size,
        "limit": limit, "world_size": world_size, "device": str(device), "evaluator": info.evaluator,
    }
    return EvalResult(
        model=info.name, dataset=dataset.dataset, num_images=count, settings=settings,
        metrics=_METRICS[info.evaluator](confusion.matrix), reported=dict(info.metrics),
        class_names=[c.strip() for c in dataset.classes],
    )


def format_report(result: EvalResult) -> str:
    """Reported vs. measured for the README's metrics, then per-class IoU and accuracy."""
    def pct(value: float) -> str:
        return "  n/a" if value is None or math.isnan(value) else f"{value:6.2f}"

    lines = [f"{result.model} on {result.dataset}: {result.num_images} images ({result.settings['mode']}"
             f"{', aug-test' if result.settings['aug_test'] else ''})", "",
             f"{'metric':<10} {'reported':>9} {'measured':>9}"]
    names = list(result.reported) + [k for k in result.metrics if k not in result.reported
                                     and not isinstance(result.metrics[k], list)]
    for name in names:
        reported = result.reported.get(name)
        lines.append(f"{name:<10} {reported if reported is not None else '':>9} {pct(result.metrics.get(name)):>9}")
    lines += ["", f"{'class':<24} {'IoU':>7} {'Acc':>7}"]
    for i, name in enumerate(result.class_names):
        lines.append(f"{name[:24]:<24} {pct(result.metrics['IoU'][i]):>7} {pct(result.metrics['Acc'][i]):>7}")
    return "\n".join(lines)

