"""The check of a user's dataset before training or evaluation uses it: every image and label read once.

Each image is decoded to its last byte (a truncated file fails) and each label's mode, size and
class indices are read, on several threads: Pillow's decoders release the GIL, and on two cores
threads read as fast as processes without starting any. What a file held is remembered in
segzoo's cache by the file's size and modification time, so a rerun reads only the files that
changed. The cache keeps facts, not verdicts: it serves any ``num_classes`` and any image reader.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from segzoo.datasets.folders import IGNORE_INDEX, MAX_LISTED_FILES, CustomFolder, DatasetError, Sample
from segzoo.inference.pipeline import applies_exif_orientation
from segzoo.weights.cache import cache_dir

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
LABEL_MODES = ("L", "P")  # single-channel 8-bit: grey, or palette indices
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations whose upright image swaps width and height


@dataclass(frozen=True)
class ImageFacts:
    """What reading an image found: its stored size and EXIF orientation tag (1 when absent)."""

    width: int
    height: int
    orientation: int

    def size(self, exif: bool) -> tuple[int, int]:
        """(width, height) as read, turned upright by the orientation tag when ``exif``."""
        if exif and self.orientation in _TRANSPOSING_ORIENTATIONS:
            return self.height, self.width
        return self.width, self.height


@dataclass(frozen=True)
class LabelFacts:
    """What reading a label found: its Pillow mode, its size, and its largest pixel value other than the
    ignore index (-1 when there is none, or when the mode holds no class indices)."""

    mode: str
    width: int
    height: int
    largest_class: int


@dataclass(frozen=True)
class BadFile:
    """A file training or evaluation could not use: ``problem`` names it and says what is wrong, ``hints`` what to
    do."""

    path: Path
    problem: str
    hints: tuple[str, ...] = ()


def read_image_facts(path: Path) -> ImageFacts:
    """Decode the whole image; JPEGs at 1/8 scale, which still reads and entropy-decodes every byte."""
    with Image.open(path) as image:
        width, height = image.size
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
        image.load()
    return ImageFacts(width, height, orientation if isinstance(orientation, int) else 1)


def read_label_facts(path: Path) -> LabelFacts:
    """Decode a label and find its largest class index; a label of another mode is not decoded."""
    with Image.open(path) as label:
        mode, (width, height) = label.mode, label.size
        if mode not in LABEL_MODES:
            return LabelFacts(mode, width, height, -1)
        values = np.asarray(label)
    counts = np.bincount(values.ravel(), minlength=IGNORE_INDEX + 1)
    present = np.flatnonzero(counts[:IGNORE_INDEX])
    return LabelFacts(mode, width, height, int(present[-1]) if present.size else -1)


def check_custom_data(
    folders: Sequence[CustomFolder], workers: int | None = None, progress: bool | None = None
) -> None:
    """Read every image and label of ``folders`` (splits of users' datasets) and raise one DatasetError
    naming each file that training or evaluation could not use (the first ``MAX_LISTED_FILES``, then a count).

    A file is bad when it cannot be read to its end, when a label is not single-channel 8-bit, when a
    label's size is not its image's (upright by EXIF orientation where the folder's reader turns images
    so), or when a label holds a class index that is neither below the folder's ``num_classes`` nor 255.
    ``workers`` threads read the files (default one per CPU; 0 or 1 reads them in this thread); files
    whose size and modification time are those of the last check are not read again.
    """
    bad: list[BadFile] = []
    for root in dict.fromkeys(folder.root for folder in folders):
        splits = [folder for folder in folders if folder.root == root]
        bad += _check_root(root, splits, (os.cpu_count() or 1) if workers is None else workers, progress)
    if not bad:
        return
    hints = list(dict.fromkeys(hint for b in bad for hint in b.hints))
    if len(bad) == 1:
        raise DatasetError("; ".join([bad[0].problem, *hints]))
    listed = [b.problem for b in bad[:MAX_LISTED_FILES]]
    if len(bad) > MAX_LISTED_FILES:
        listed.append(f"and {len(bad) - MAX_LISTED_FILES} more")
    roots = ", ".join(str(root) for root in dict.fromkeys(folder.root for folder in folders))
    raise DatasetError(
        f"{len(bad)} files of {roots} cannot be used:\n  " + "\n  ".join(listed) + "".join(f"\n{h}" for h in hints)
    )


def _check_root(root: Path, folders: Sequence[CustomFolder], workers: int, progress: bool | None) -> list[BadFile]:
    """The bad files of ``folders``, splits of the dataset at ``root``, reading the files the cache cannot answer."""
    cache = _FactsCache(root)
    known = cache.load()
    facts: dict[Path, ImageFacts | LabelFacts | BadFile] = {}
    to_read: list[_Read] = []
    for folder in folders:
        for sample in folder.samples:
            for path, kind, reader in (
                (sample.image, ImageFacts, read_image_facts),
                (sample.label, LabelFacts, read_label_facts),
            ):
                try:
                    stat = path.stat()
                except OSError as err:
                    facts[path] = _unreadable(path, kind, err)
                    continue
                signature = (stat.st_size, stat.st_mtime_ns)
                remembered = cache.lookup(known, path, signature, kind)
                if remembered is None:
                    to_read.append(_Read(path, kind, reader, signature))
                else:
                    facts[path] = remembered
    cached = len(facts)
    if to_read:
        disable = None if progress is None else not progress
        with tqdm(total=len(to_read), desc=f"checking {root}", unit="file", disable=disable) as bar:
            for read, result in zip(to_read, _read_all(to_read, workers)):
                facts[read.path] = result
                bar.update(1)
    log.info("checked %d files of %s: %d read, %d as the last check found them", len(facts), root, len(to_read), cached)
    cache.save(known, folders, {read.path: (facts[read.path], read.signature) for read in to_read})
    bad = []
    for folder in folders:
        exif = applies_exif_orientation(folder.pipeline)
        for sample in folder.samples:
            bad += _judge(sample, facts[sample.image], facts[sample.label], folder.num_classes, exif)
    return bad


@dataclass(frozen=True)
class _Read:
    """A file the cache cannot answer for: its ``kind`` of facts, their ``reader``, its (size, mtime_ns)."""

    path: Path
    kind: type[ImageFacts] | type[LabelFacts]
    reader: Callable[[Path], ImageFacts | LabelFacts]
    signature: tuple[int, int]


def _read_all(to_read: Sequence[_Read], workers: int) -> Iterator[ImageFacts | LabelFacts | BadFile]:
    """Each file read by its reader, in order, on ``workers`` threads; a failure becomes a BadFile."""

    def attempt(read: _Read) -> ImageFacts | LabelFacts | BadFile:
        try:
            return read.reader(read.path)
        except Exception as err:  # whatever stops the reader makes the file unusable: report it, check the rest
            return _unreadable(read.path, read.kind, err)

    if workers <= 1 or len(to_read) == 1:
        yield from map(attempt, to_read)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="segzoo-check") as pool:
        yield from pool.map(attempt, to_read)


def _unreadable(path: Path, kind: type[ImageFacts] | type[LabelFacts], err: BaseException) -> BadFile:
    what = "image" if kind is ImageFacts else "label"
    return BadFile(path, f"{what} {path} cannot be read ({type(err).__name__}: {err})")


def _judge(
    sample: Sample, image_facts: ImageFacts | BadFile, label_facts: LabelFacts | BadFile, num_classes: int, exif: bool
) -> list[BadFile]:
    """The bad files of one image/label pair, each once with all that is wrong with it."""
    bad = [facts for facts in (image_facts, label_facts) if isinstance(facts, BadFile)]
    if isinstance(label_facts, BadFile):
        return bad
    if label_facts.mode not in LABEL_MODES:
        hint = (
            "labels must be single-channel 8-bit PNGs of class indices (mode 'L' or 'P'): convert colour-coded "
            "masks to one index per pixel first, e.g. Image.fromarray(index_array.astype('uint8')).save(path)"
        )
        return [*bad, BadFile(sample.label, f"label {sample.label} is a {label_facts.mode!r} image", (hint,))]
    problems, hints = [], []
    if isinstance(image_facts, ImageFacts):
        width, height = image_facts.size(exif)
        if (width, height) != (label_facts.width, label_facts.height):
            turned = (width, height) != image_facts.size(False)
            upright = " once turned upright by its EXIF orientation" if turned else ""
            problems.append(
                f"is {label_facts.width}x{label_facts.height} but its image {sample.image} is {width}x{height}{upright}"
            )
    if label_facts.largest_class >= num_classes:
        problems.append(
            f"has class index {label_facts.largest_class}, but the dataset has {num_classes} classes "
            f"(0..{num_classes - 1}, 255 = ignore)"
        )
        hints.append("pass the right --num-classes or fix the labels")
    if problems:
        bad.append(BadFile(sample.label, f"label {sample.label} " + " and ".join(problems), tuple(hints)))
    return bad


class _FactsCache:
    """What the files of the dataset at ``root`` held, keyed by their path under it, with the (size, mtime_ns)
    they had when read: one JSON file per dataset in ``<segzoo cache>/datacheck``, replaced whole on write."""

    def __init__(self, root: Path) -> None:
        self.root, self.absolute_root = root, root.resolve()
        key = hashlib.sha256(str(self.absolute_root).encode()).hexdigest()[:16]
        self.path = cache_dir() / "datacheck" / f"{key}.json"

    def load(self) -> dict[str, dict[str, Any]]:
        try:
            stored = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(stored, dict) or (stored.get("format"), stored.get("root")) != (
            CACHE_FORMAT,
            str(self.absolute_root),
        ):
            return {}
        files = stored.get("files")
        return files if isinstance(files, dict) else {}

    def _key(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def lookup(
        self,
        known: dict[str, dict[str, Any]],
        path: Path,
        signature: tuple[int, int],
        kind: type[ImageFacts] | type[LabelFacts],
    ) -> ImageFacts | LabelFacts | None:
        """The ``kind`` of facts remembered of ``path``, if it still has ``signature``."""
        entry = known.get(self._key(path))
        if not isinstance(entry, dict) or entry.get("signature") != list(signature):
            return None
        try:
            return kind(**entry["facts"])
        except (KeyError, TypeError):
            return None

    def save(
        self,
        known: dict[str, dict[str, Any]],
        folders: Sequence[CustomFolder],
        read: dict[Path, tuple[ImageFacts | LabelFacts | BadFile, tuple[int, int]]],
    ) -> None:
        """Remember the files just ``read`` (not the unreadable ones), forget files of ``folders``' splits that are
        gone, and keep the rest; a cache that cannot be written costs a rerun its reads, nothing else."""
        present = {self._key(path) for folder in folders for s in folder.samples for path in (s.image, s.label)}
        splits = tuple(f"{kind}/{folder.split}/" for folder in folders for kind in ("images", "labels"))
        files = {key: entry for key, entry in known.items() if key in present or not key.startswith(splits)}
        for path, (facts, signature) in read.items():
            if not isinstance(facts, BadFile):
                files[self._key(path)] = {"signature": list(signature), "facts": asdict(facts)}
        if files == known:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump({"format": CACHE_FORMAT, "root": str(self.absolute_root), "files": files}, f)
                os.replace(tmp, self.path)
            finally:
                Path(tmp).unlink(missing_ok=True)
        except OSError as err:
            log.warning("could not remember the check of %s in %s: %s", self.root, self.path, err)
