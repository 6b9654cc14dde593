"""``segzoo.predict_folder``: segment every image of files and folders, on one process or a shard per process.

Decoding and the model's resize and normalization run ahead in DataLoader workers; the forward, the resize of the
logits to each image's size and the writing run in the main process. Under ``torchrun`` (``RANK`` and
``WORLD_SIZE`` set) each process takes every ``WORLD_SIZE``-th image of the same sorted list, so every image is
written once by exactly one process, on any number of nodes.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from segzoo.inference import PreparedImage, predict, predict_prepared, prepare_image
from segzoo.inference.predict import Amp, Mode
from segzoo.jobs.files import ImageTask, OutputKind, plan_tasks, process_shard, read_image, shard
from segzoo.jobs.outputs import (
    AREA_COLUMNS,
    ClassMeta,
    area_rows,
    label_image,
    overlay_image,
    probabilities,
    save_png,
    save_probabilities,
    write_atomically,
)
from segzoo.segmentors import EncoderDecoder
from segzoo.zoo.records import ModelInfo


@dataclass(frozen=True)
class Failure:
    """An image the job could not segment, and why."""

    source: Path
    reason: str


@dataclass(frozen=True)
class FolderSummary:
    """What a job did: images segmented, skipped (outputs already there), failed; ``seconds`` from the first
    image read to the last output written. With a process group the counts are all processes' and ``seconds``
    the slowest one's (``combined``); otherwise this process's. ``failures`` are this process's."""

    done: int
    skipped: int
    failed: int
    seconds: float
    processes: int
    combined: bool
    failures: tuple[Failure, ...] = ()

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        whose = f"{self.processes} process{'es' if self.processes > 1 else ''}" if self.combined else "this process"
        if self.processes > 1 and not self.combined:
            whose = f"this process of {self.processes} (no process group: each process counts its own)"
        return (
            f"{self.done} images segmented, {self.skipped} skipped (outputs exist), {self.failed} failed "
            f"in {self.seconds:.1f} s ({self.images_per_second:.2f} images/s, {whose})"
        )


@dataclass(frozen=True)
class _Loaded:
    """What a worker hands the main process for one image: the prepared input and (for an overlay or the
    aug-test) the image itself, or why the image cannot be segmented."""

    prepared: PreparedImage | None = None
    image: np.ndarray | None = None
    error: str | None = None

    def pin_memory(self) -> _Loaded:
        """The DataLoader's ``pin_memory`` hook: the input in page-locked memory, for a faster copy to the GPU."""
        if self.prepared is None:
            return self
        return replace(self, prepared=replace(self.prepared, pixels=self.prepared.pixels.pin_memory()))


class _ReadAhead(Dataset):
    """The job's images, decoded (and for the plain test, resized and normalized) where the DataLoader runs
    ``__getitem__``: in its worker processes."""

    def __init__(self, tasks: Sequence[ImageTask], info: ModelInfo, prepare: bool, keep_image: bool) -> None:
        self.tasks, self.info, self.prepare, self.keep_image = tasks, info, prepare, keep_image

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, index: int) -> _Loaded:
        try:
            image = read_image(self.tasks[index].source, self.info.test_pipeline)
            prepared = prepare_image(image, self.info) if self.prepare else None
        except (ValueError, MemoryError) as err:  # not an image, or too elongated for the entry's resize
            return _Loaded(error=str(err) or type(err).__name__)
        return _Loaded(prepared, image if self.keep_image or not self.prepare else None)


def _unchanged(item: _Loaded) -> _Loaded:
    return item


def print_failure(failure: Failure) -> None:
    """The default report of an image that was not segmented: one ``segzoo: error:`` line on stderr."""
    print(f"segzoo: error: {failure.source}: {failure.reason}", file=sys.stderr)


class _AreaTable:
    """The per-image class-area CSV of this process, written row by row into a temporary file beside the
    target and renamed when the job ends (to the target, or with several processes to this rank's part)."""

    def __init__(self, target: Path, rank: int, world_size: int) -> None:
        self.part = target if world_size == 1 else part_path(target, rank, world_size)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.part.with_name(f".{self.part.name}.part").open("w", newline="")
        self._file.write(",".join(AREA_COLUMNS) + "\n")

    def add(self, rows: list[list[str]]) -> None:
        csv.writer(self._file, lineterminator="\n").writerows(rows)

    def close(self) -> None:
        self._file.close()
        Path(self._file.name).replace(self.part)

    def discard(self) -> None:
        self._file.close()
        Path(self._file.name).unlink(missing_ok=True)


def part_path(target: Path, rank: int, world_size: int) -> Path:
    """Rank ``rank``'s part of the area table ``target`` of a job on ``world_size`` processes."""
    return target.with_name(f"{target.stem}.rank{rank}-of-{world_size}{target.suffix}")


def merge_area_parts(target: Path, tasks: Sequence[ImageTask], world_size: int) -> None:
    """Join the ranks' parts of the area table into ``target`` in the job's image order, then remove them.

    Task ``i`` was rank ``i % world_size``'s, so its rows (if any) are next in that rank's part: the parts are
    read in step, a row at a time, never whole.
    """
    parts = [part_path(target, rank, world_size) for rank in range(world_size)]
    files = [path.open(newline="") for path in parts]
    try:
        readers = [_Peekable(csv.reader(file)) for file in files]
        for reader in readers:
            reader.next()  # the header
        text_rows = _merged_rows(readers, tasks)
        write_atomically(target, lambda out: _write_rows(out, text_rows))
    finally:
        for file in files:
            file.close()
    for path in parts:
        path.unlink()


def _write_rows(out: io.BufferedWriter, rows: Iterator[list[str]]) -> None:
    text = io.TextIOWrapper(out, newline="", write_through=True)
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(AREA_COLUMNS)
    writer.writerows(rows)
    text.detach()


class _Peekable:
    def __init__(self, rows: Iterator[list[str]]) -> None:
        self._rows, self._head = rows, None

    def peek(self) -> list[str] | None:
        if self._head is None:
            self._head = next(self._rows, None)
        return self._head

    def next(self) -> list[str] | None:
        head, self._head = self.peek(), None
        return head


def _merged_rows(readers: list[_Peekable], tasks: Sequence[ImageTask]) -> Iterator[list[str]]:
    for index, task in enumerate(tasks):
        reader, source = readers[index % len(readers)], str(task.source)
        while (row := reader.peek()) is not None and row[0] == source:
            yield reader.next()


def _combined(counts: list[float], seconds: float) -> tuple[list[float], float]:
    """Counts summed and the longest time over the process group's processes."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    summed = torch.tensor(counts, dtype=torch.float64, device=device)
    slowest = torch.tensor([seconds], dtype=torch.float64, device=device)
    dist.all_reduce(summed)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return summed.tolist(), slowest.item()


def predict_folder(
    model: EncoderDecoder,
    inputs: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    output: OutputKind = "labels",
    recursive: bool = True,
    workers: int = 2,
    skip_existing: bool = False,
    save_scores: bool = False,
    summary: str | Path | None = None,
    mode: Mode | None = None,
    aug_test: bool = False,
    device: str | torch.device | None = None,
    amp: Amp | None = None,
    channels_last: bool = False,
    progress: bool | None = None,
    on_error: Callable[[Failure], None] | None = print_failure,
    on_written: Callable[[ImageTask], None] | None = None,
    cuda_graphs: bool | None = None,
) -> FolderSummary:
    """Segment every image of ``inputs`` (files and folders) and write each one's outputs under ``out_dir``.

    Folders are walked with their subfolders (``recursive``), and the output tree mirrors each folder's tree;
    see :func:`segzoo.jobs.files.plan_tasks` for the names. ``output`` is ``"labels"`` (an indexed PNG of
    class indices with the dataset's palette) or ``"overlay"`` (colored classes and a legend over the image);
    ``save_scores`` adds each image's ``(C, H, W)`` class probabilities as float16 in a ``.npz``; ``summary``
    names a CSV of each image's class areas (:data:`segzoo.jobs.outputs.AREA_COLUMNS`). ``workers``
    DataLoader processes decode and prepare images ahead of the forward (0: in this process). Outputs are
    written atomically; ``skip_existing`` leaves images whose outputs all exist alone (a killed job, run
    again, does only what is missing). An image that cannot be read or segmented is passed to ``on_error``
    and skipped. Under ``torchrun`` (or with ``RANK`` and ``WORLD_SIZE`` set) this process does its shard;
    with an initialized process group the summary counts all processes. ``mode``, ``aug_test``, ``amp``,
    ``channels_last`` and ``cuda_graphs`` are :func:`segzoo.predict`'s; ``device`` moves the model there.
    """
    if device is not None:
        model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    tasks = plan_tasks(inputs, Path(out_dir), model.require_info().name, output, recursive, save_scores)
    return run_tasks(
        model, tasks, output, workers, skip_existing, summary, mode, aug_test, amp, channels_last, progress, on_error,
        on_written, cuda_graphs,
    )  # fmt: skip


@torch.inference_mode()
def run_tasks(
    model: EncoderDecoder,
    tasks: Sequence[ImageTask],
    output: OutputKind = "labels",
    workers: int = 2,
    skip_existing: bool = False,
    summary: str | Path | None = None,
    mode: Mode | None = None,
    aug_test: bool = False,
    amp: Amp | None = None,
    channels_last: bool = False,
    progress: bool | None = None,
    on_error: Callable[[Failure], None] | None = print_failure,
    on_written: Callable[[ImageTask], None] | None = None,
    cuda_graphs: bool | None = None,
) -> FolderSummary:
    """:func:`predict_folder` for tasks :func:`segzoo.jobs.files.plan_tasks` listed (the command line lists
    them before it loads the model, so that a mistyped folder costs no download), with the model where it is."""
    if workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers}")
    model.eval()
    info = model.require_info()
    classes = ClassMeta.of(info)
    rank, world_size = process_shard()
    mine = shard(tasks, rank, world_size)
    pending = [task for task in mine if not (skip_existing and task.done())]
    waiting = set(pending)
    table = _AreaTable(Path(summary), rank, world_size) if summary is not None else None
    on_gpu = next(model.parameters()).device.type == "cuda"
    loader = DataLoader(
        _ReadAhead(pending, info, prepare=not aug_test, keep_image=output == "overlay"),
        batch_size=None,
        collate_fn=_unchanged,
        # Workers keep OpenCV's own thread count: cv2.setNumThreads in a forked worker waits forever on the pool
        # that the parent's resizes started.
        num_workers=workers if len(pending) > 1 else 0,
        pin_memory=on_gpu,
    )
    failures: list[Failure] = []
    done = 0
    start = time.perf_counter()
    desc = info.name if world_size == 1 else f"{info.name} [{rank + 1}/{world_size}]"
    skipped = len(mine) - len(pending)
    bar_off = None if progress is None else not progress
    try:
        with tqdm(total=len(mine), desc=desc, unit="img", position=rank, disable=bar_off) as bar:
            bar.update(skipped)
            loaded_images = iter(loader)
            for task in mine:
                if skip_existing and task not in waiting:
                    if table is not None and output == "labels":  # its areas, read back from its labels
                        with Image.open(task.image) as labels:
                            table.add(area_rows(task.source, np.asarray(labels), classes))
                    continue
                loaded = next(loaded_images)
                failure = _segment_and_write(
                    model, loaded, task, output, classes, table, mode, aug_test, amp, channels_last, cuda_graphs
                )
                if failure is None:
                    done += 1
                    if on_written is not None:
                        on_written(task)
                else:
                    failures.append(failure)
                    if on_error is not None:
                        on_error(failure)
                bar.update(1)
    except BaseException:
        if table is not None:
            table.discard()
        raise
    seconds = time.perf_counter() - start
    if table is not None:
        table.close()
    counts = [done, skipped, len(failures)]
    combined = dist.is_available() and dist.is_initialized()
    if combined:
        counts, seconds = _combined(counts, seconds)
        if table is not None and world_size > 1 and rank == 0:
            merge_area_parts(Path(summary), tasks, world_size)
    return FolderSummary(*map(int, counts), seconds, world_size, combined, tuple(failures))


def _segment_and_write(
    model: EncoderDecoder,
    loaded: _Loaded,
    task: ImageTask,
    output: OutputKind,
    classes: ClassMeta,
    table: _AreaTable | None,
    mode: Mode | None,
    aug_test: bool,
    amp: Amp | None,
    channels_last: bool,
    cuda_graphs: bool | None,
) -> Failure | None:
    """Segment one loaded image and write its outputs; the failure, if the model cannot take it."""
    if loaded.error is not None:
        return Failure(task.source, loaded.error)
    save_scores = task.scores is not None
    try:
        if loaded.prepared is not None:
            prediction = predict_prepared(
                model, loaded.prepared, mode, amp, channels_last, save_scores, cuda_graphs=cuda_graphs
            )
        else:
            prediction = predict(
                model,
                loaded.image,
                mode,
                aug_test,
                amp=amp,
                channels_last=channels_last,
                return_scores=save_scores,
                cuda_graphs=cuda_graphs,
            )
    except ValueError as err:  # e.g. too small for the model
        return Failure(task.source, str(err))
    if output == "overlay":
        save_png(overlay_image(loaded.image, prediction.labels, classes), task.image)
    else:
        save_png(label_image(prediction.labels, classes), task.image)
    if task.scores is not None:
        save_probabilities(probabilities(prediction.scores, averaged=aug_test), classes, task.scores)
    if table is not None:
        table.add(area_rows(task.source, prediction.labels, classes))
    return None
