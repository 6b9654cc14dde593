"""Which images a prediction job reads, where each one's outputs go, and which process takes which image."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch.distributed as dist
from PIL import Image, UnidentifiedImageError

from segzoo.inference import load_image
from segzoo.zoo.records import InferencePipeline

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
OutputKind = Literal["overlay", "labels"]


@dataclass(frozen=True)
class ImageTask:
    """One image of a job and the files it is written to: ``image`` (the PNG ``output`` asks for) and, with
    ``--save-scores``, ``scores`` (a ``.npz``)."""

    source: Path
    image: Path
    scores: Path | None

    @property
    def outputs(self) -> tuple[Path, ...]:
        return (self.image,) if self.scores is None else (self.image, self.scores)

    def done(self) -> bool:
        """Whether every output exists (a rerun with ``--skip-existing`` leaves the image alone)."""
        return all(path.is_file() for path in self.outputs)


class UnreadableImageError(ValueError):
    """An image file that cannot be decoded; the message says why (the file is the caller's to name)."""


def _is_candidate(path: Path) -> bool:
    """A folder's file with an image suffix; a link to nothing stays, for :func:`read_image` to report."""
    return path.suffix.lower() in IMAGE_SUFFIXES and (path.is_file() or path.is_symlink() and not path.exists())


def _walk(folder: Path, recursive: bool, excluded: Path | None) -> list[Path]:
    """``folder``'s images, relative to it, in a deterministic order (sorted by path); with ``recursive`` its
    subfolders' too, except ``excluded`` (the job's output folder, when it lies inside) and links to folders
    (which could loop)."""
    if not recursive:
        return sorted(p.relative_to(folder) for p in folder.iterdir() if _is_candidate(p))
    found = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = [d for d in dirs if excluded is None or (here / d).resolve() != excluded]
        found += [(here / f).relative_to(folder) for f in files if _is_candidate(here / f)]
    return sorted(found)


def plan_tasks(
    inputs: Sequence[str | Path],
    out: Path,
    model_name: str,
    output: OutputKind,
    recursive: bool = True,
    save_scores: bool = False,
) -> list[ImageTask]:
    """Every image the inputs name, in order, with its output files.

    A file named on its own is written into ``out``; a folder's images into ``out`` at their path inside the
    folder (the output tree mirrors the input tree). Outputs are named ``<stem>_<model>.png`` (overlay) or
    ``<stem>_<model>_labels.png``, scores ``<stem>_<model>_scores.npz``; a single image with ``out`` ending in
    ``.png`` is written to ``out`` itself. An image named twice is segmented once; two images that would be
    written to the same file are an error.
    """
    excluded = out.resolve()
    named: list[tuple[Path, Path]] = []  # (source, its output folder relative to out)
    for item in map(Path, inputs):
        if item.is_dir():
            named += [(item / rel, rel.parent) for rel in _walk(item, recursive, excluded)]
        elif item.is_file() or item.is_symlink():
            named.append((item, Path()))
        else:
            raise FileNotFoundError(f"no such image or folder: {item}")
    if not named:
        raise FileNotFoundError(f"no images found in {', '.join(map(str, inputs))}")
    if len(named) == 1 and out.suffix.lower() == ".png":
        scores = out.with_name(f"{out.stem}_scores.npz") if save_scores else None
        return [ImageTask(named[0][0], out, scores)]
    suffix = "" if output == "overlay" else "_labels"
    tasks, writers = [], {}
    for source, folder in named:
        stem = f"{source.stem}_{model_name}"
        task = ImageTask(
            source,
            out / folder / f"{stem}{suffix}.png",
            out / folder / f"{stem}_scores.npz" if save_scores else None,
        )
        other = writers.get(task.image)
        if other == source:  # named twice on the command line: segmented once
            continue
        if other is not None:
            raise ValueError(
                f"{other} and {source} would both be written to {task.image}; "
                f"rename one of them or segment them in separate runs with different --out folders"
            )
        writers[task.image] = source
        tasks.append(task)
    return tasks


def process_shard() -> tuple[int, int]:
    """(rank, world size) of this process: the process group's if one is initialized, else what ``torchrun``
    (or any launcher) sets in ``RANK`` and ``WORLD_SIZE``, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world_size}: the rank must be in [0, WORLD_SIZE)")
    return rank, world_size


def shard(tasks: Sequence[ImageTask], rank: int, world_size: int) -> list[ImageTask]:
    """This process's share: every ``world_size``-th task from ``rank``; the shards of all ranks are disjoint and
    together hold every task once (each process lists the same tasks in the same order)."""
    return list(tasks[rank::world_size])


def read_image(path: Path, pipeline: InferencePipeline | None) -> np.ndarray:
    """The ``(H, W, 3)`` uint8 RGB image at ``path``, read as ``pipeline``'s upstream reader did; an
    :class:`UnreadableImageError` saying why it cannot be."""
    if path.is_symlink() and not path.exists():
        raise UnreadableImageError(f"a link to {path.readlink()}, which does not exist")
    try:
        return np.asarray(load_image(path, pipeline))
    except Image.DecompressionBombError as err:
        raise UnreadableImageError(
            f"too large to decode safely ({err}); downscale it (or crop it into tiles) first"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UnreadableImageError(f"not an image ({decoder_reason(err, path)})") from None


def decoder_reason(err: Exception, path: str | Path) -> str:
    """Why an image decoder refused ``path``, without the path (the message names the image its own way)."""
    return str(err).replace(str(path), "").strip(" :'") or type(err).__name__
