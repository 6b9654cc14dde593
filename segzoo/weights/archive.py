"""Checkpoints packed in tar or zip archives with other files (GloRe publishes its weights with its code,
EMANet's ImageNet ResNets come zipped).

Nothing in an archive is executed or imported, and an archive is judged
before anything is expanded. It is recognised by its magic bytes only (a zip's
``PK``, a tar header's ``ustar`` or valid checksum, gzip, bzip2 or xz around a
tar). The whole member list is checked, with the same rules for both kinds:
regular files and folders only (no links, devices, FIFOs or sparse files),
relative names without ``..``, and the :class:`ArchiveLimits` on counts, sizes
and compression ratios. Listing a compressed tar means decompressing it, so
that stream is counted too and cut off the moment a limit is crossed. Only the
chosen checkpoint member is extracted, by streaming at most its declared size
to a file segzoo names itself in a scratch folder of the cache; a member that
is itself an archive is opened in turn, at most :attr:`ArchiveLimits.depth`
archives deep.

A zip that ``torch.save`` wrote (a ``data.pkl`` member) is a checkpoint, not
an archive: :func:`archive_kind` tells them apart.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import shutil
import socket
import stat
import struct
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import IO, ClassVar, Literal

from segzoo.weights.cache import cache_dir, process_exists
from segzoo.weights.errors import CheckpointError

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".pth.tar", ".ckpt", ".pkl", ".safetensors", ".bin")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
ZIP_MAGIC = b"PK\x03\x04"  # a zip's first local file header, also where torch.save's zip format starts
_COMPRESSIONS: dict[bytes, str] = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}
_TAR_BLOCK = 512
# Ratios are judged once this much has been expanded: a few kB of text compress far better than any weights.
RATIO_FLOOR_BYTES = 1 << 20
SCRATCH_FOLDER_NAME = "tmp"
SCRATCH_STALE_AFTER_S = 24 * 3600

ArchiveKind = Literal["zip", "tar"]


@dataclass(frozen=True)
class ArchiveLimits:
    """What segzoo expands from one archive; read from the environment at each use, so that a file you trust
    may be let through.

    ``members`` (``SEGZOO_ARCHIVE_MAX_MEMBERS``): entries in the listing.
    ``member_bytes`` (``SEGZOO_ARCHIVE_MAX_MEMBER_BYTES``): the expanded size
    of any one member, declared or streamed. ``total_bytes``
    (``SEGZOO_ARCHIVE_MAX_TOTAL_BYTES``): all members together, and all a
    compressed tar's stream expands to while it is listed. ``ratio``
    (``SEGZOO_ARCHIVE_MAX_RATIO``): expanded bytes per stored byte, of a zip
    member or a compressed tar's stream (weights barely compress, so only a
    bomb comes near it). ``depth`` (``SEGZOO_ARCHIVE_MAX_DEPTH``): archives
    inside archives, the outer one included; the deepest a published
    checkpoint comes is a tar inside a zip, and one level more is slack.
    """

    members: int = 10_000
    member_bytes: int = 8 << 30
    total_bytes: int = 16 << 30
    ratio: float = 100.0
    depth: int = 3

    _ENV: ClassVar[dict[str, str]] = {
        "members": "SEGZOO_ARCHIVE_MAX_MEMBERS",
        "member_bytes": "SEGZOO_ARCHIVE_MAX_MEMBER_BYTES",
        "total_bytes": "SEGZOO_ARCHIVE_MAX_TOTAL_BYTES",
        "ratio": "SEGZOO_ARCHIVE_MAX_RATIO",
        "depth": "SEGZOO_ARCHIVE_MAX_DEPTH",
    }

    @classmethod
    def from_env(cls) -> ArchiveLimits:
        values: dict[str, float] = {}
        for f in fields(cls):
            raw = os.environ.get(cls._ENV[f.name], "").strip()
            if not raw:
                continue
            convert = float if f.name == "ratio" else int
            try:
                value = convert(raw)
            except ValueError:
                value = 0
            if value <= 0:
                raise CheckpointError(f"{cls._ENV[f.name]}={raw!r} is not valid: expected a positive number")
            values[f.name] = value
        return cls(**values)

    def variable(self, name: str) -> str:
        """The environment variable that raises the limit ``name``."""
        return self._ENV[name]


@dataclass(frozen=True)
class ZipMember:
    """A zip entry seen like a ``tarfile.TarInfo``: name, declared (uncompressed) size, kind, link target."""

    name: str
    size: int
    mode: int  # the Unix mode in the entry's external attributes; no file-type bits when written elsewhere
    stored_size: int

    @classmethod
    def of(cls, info: zipfile.ZipInfo) -> ZipMember:
        return cls(info.filename, info.file_size, info.external_attr >> 16, info.compress_size)

    @property
    def linkname(self) -> str:
        return "(target stored in the member)"

    def isdir(self) -> bool:
        return self.name.endswith("/") or stat.S_ISDIR(self.mode)

    def issym(self) -> bool:
        return stat.S_ISLNK(self.mode)

    def islnk(self) -> bool:
        return False

    def issparse(self) -> bool:
        return False

    def isfile(self) -> bool:
        return not self.isdir() and (stat.S_IFMT(self.mode) == 0 or stat.S_ISREG(self.mode))


Member = tarfile.TarInfo | ZipMember


def compression_of(head: bytes) -> str | None:
    """``gzip``, ``bzip2`` or ``xz`` when ``head`` starts as such a stream does."""
    name = next((name for magic, name in _COMPRESSIONS.items() if head.startswith(magic)), None)
    if name == "bzip2" and not b"1" <= head[3:4] <= b"9":
        return None  # "BZh" is followed by the block size, a digit 1-9; text may start with "BZh" too
    return name


def _is_tar_header(block: bytes) -> bool:
    """Whether ``block`` is a tar header: POSIX/GNU ``ustar`` magic, or an old-style header with a valid checksum."""
    if len(block) < _TAR_BLOCK or not any(block):
        return False
    if block[257:262] == b"ustar":
        return True
    try:
        recorded = int(block[148:156].replace(b"\0", b" ").strip() or b"-1", 8)
    except ValueError:
        return False
    return recorded == sum(block[:148]) + 8 * 32 + sum(block[156:_TAR_BLOCK])


def _first_expanded_block(head: bytes, compression: str) -> bytes:
    """The first tar block a compressed stream starting with ``head`` expands to (or less), bounded."""
    decompress: Callable[[bytes, int], bytes] = {
        "gzip": zlib.decompressobj(wbits=31).decompress,
        "bzip2": bz2.BZ2Decompressor().decompress,
        "xz": lzma.LZMADecompressor().decompress,
    }[compression]
    try:
        return decompress(head, _TAR_BLOCK)
    except (zlib.error, OSError, lzma.LZMAError, EOFError):
        return b""


def _is_torch_zip(path: Path, head: bytes) -> bool:
    """Whether the zip ``path`` (starting with ``head``) is ``torch.save``'s format: its first member, or any
    member when the first says nothing, is ``data.pkl``."""
    if len(head) >= 30:
        (name_length,) = struct.unpack("<H", head[26:28])
        first = head[30 : 30 + name_length]
        if first == b"data.pkl" or first.endswith(b"/data.pkl"):
            return True
    try:
        with zipfile.ZipFile(path) as zf:
            return any(name.endswith("/data.pkl") or name == "data.pkl" for name in zf.namelist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False  # an archive, whose reading then says what is wrong


def archive_kind(path: Path) -> ArchiveKind | None:
    """``"zip"`` or ``"tar"`` when the bytes of ``path`` are an archive of files, by their magic bytes only.

    A zip holding a ``data.pkl`` is a checkpoint ``torch.save`` wrote, not an
    archive. A compressed file is a tar only when its first expanded block is a
    tar header. ``zipfile.is_zipfile`` and ``tarfile.is_tarfile`` are never
    asked: the first accepts any file ending in a zip, the second crawls
    through a file of zeros.
    """
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if head.startswith(ZIP_MAGIC):
        return None if _is_torch_zip(path, head) else "zip"
    compression = compression_of(head)
    block = _first_expanded_block(head, compression) if compression else head[:_TAR_BLOCK]
    return "tar" if _is_tar_header(block) else None


class _CountingReader(io.RawIOBase):
    """The raw bytes of a file, counted as a decompressor consumes them."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = self.raw.readinto(buffer)
        self.consumed += n or 0
        return n


_DECOMPRESSED: dict[str, Callable[[IO[bytes]], IO[bytes]]] = {
    "gzip": lambda raw: gzip.GzipFile(fileobj=raw),
    "bzip2": bz2.BZ2File,
    "xz": lzma.LZMAFile,
}


class _BoundedStream(io.RawIOBase):
    """The expanded bytes of a compressed tar, cut off the moment they exceed the limits on size or ratio."""

    def __init__(self, raw: IO[bytes], compression: str, limits: ArchiveLimits, archive: Path) -> None:
        self.counter = _CountingReader(raw)
        self.inner: IO[bytes] = _DECOMPRESSED[compression](self.counter)
        self.expanded = 0
        self.limits = limits
        self.archive = archive

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        try:
            data = self.inner.read(len(buffer))
        except (OSError, EOFError, zlib.error, lzma.LZMAError) as err:
            raise CheckpointError(f"{self.archive} cannot be decompressed (truncated or damaged?): {err}") from err
        self.expanded += len(data)
        if self.expanded > self.limits.total_bytes:
            raise CheckpointError(
                f"{self.archive} expands to more than {self.limits.total_bytes} bytes; refusing it "
                f"(raise {self.limits.variable('total_bytes')} for a file you trust)"
            )
        if self.expanded > RATIO_FLOOR_BYTES and self.expanded > self.limits.ratio * self.counter.consumed:
            raise CheckpointError(
                f"{self.archive} expands more than {self.limits.ratio:g} times (a decompression bomb?); refusing "
                f"it (raise {self.limits.variable('ratio')} for a file you trust)"
            )
        buffer[: len(data)] = data
        return len(data)


@contextmanager
def _open_tar(archive: Path, limits: ArchiveLimits) -> Iterator[tarfile.TarFile]:
    """The tar ``archive``: seekable when plain, a bounded stream (members in order, once) when compressed."""
    with open(archive, "rb") as raw:
        compression = compression_of(raw.read(8))
        raw.seek(0)
        if compression is None:
            with tarfile.open(fileobj=raw, mode="r:") as tar:
                yield tar
            return
        with (
            _BoundedStream(raw, compression, limits, archive) as stream,
            tarfile.open(fileobj=io.BufferedReader(stream, 1 << 16), mode="r|") as tar,
        ):
            yield tar


def member_problem(member: Member, limits: ArchiveLimits | None = None) -> str | None:
    """Why ``member`` is refused, or ``None``."""
    limits = limits or ArchiveLimits.from_env()
    name = PurePosixPath(member.name)
    if name.is_absolute() or member.name.startswith(("/", "\\")) or (name.parts and ":" in name.parts[0]):
        return "absolute path"
    if ".." in name.parts:
        return "path with '..'"
    if member.issym() or member.islnk():
        return f"link to {member.linkname!r}"
    if not (member.isfile() or member.isdir()):
        return "device, FIFO or other special file"
    if member.issparse():
        return "sparse file (its holes would expand to zeros)"
    if member.size > limits.member_bytes:
        return (
            f"{member.size} bytes, over the {limits.member_bytes} byte limit "
            f"(raise {limits.variable('member_bytes')} for a file you trust)"
        )
    if isinstance(member, ZipMember) and member.size > RATIO_FLOOR_BYTES:
        ratio = member.size / max(member.stored_size, 1)
        if ratio > limits.ratio:
            return (
                f"expands {ratio:.0f} times ({member.stored_size} bytes to {member.size}), over the "
                f"{limits.ratio:g} limit: a decompression bomb? (raise {limits.variable('ratio')} for a file you trust)"
            )
    return None


def list_members(archive: Path, limits: ArchiveLimits | None = None) -> list[Member]:
    """The members of a tar or zip ``archive``, unchecked (at most :attr:`ArchiveLimits.members`).

    Listing a compressed tar expands it, within the limits on size and ratio.
    """
    limits = limits or ArchiveLimits.from_env()
    too_many = CheckpointError(
        f"{archive} has more than {limits.members} members; refusing to read it "
        f"(raise {limits.variable('members')} for a file you trust)"
    )
    if archive_kind(archive) == "zip":
        try:
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
            raise CheckpointError(f"{archive} is not a readable zip archive (truncated or damaged?): {err}") from err
        if len(infos) > limits.members:
            raise too_many
        return [ZipMember.of(info) for info in infos]
    try:
        with _open_tar(archive, limits) as tar:
            members: list[Member] = []
            for member in tar:
                members.append(member)
                if len(members) > limits.members:
                    raise too_many
    except (tarfile.TarError, OSError, EOFError) as err:
        raise CheckpointError(f"{archive} is not a readable tar archive (truncated or damaged?): {err}") from err
    return members


def safe_members(archive: Path, limits: ArchiveLimits | None = None) -> list[Member]:
    """The members of ``archive`` (tar or zip), after checking every one of them; refuses the archive on any
    bad member."""
    limits = limits or ArchiveLimits.from_env()
    members = list_members(archive, limits)
    refused = [f"{m.name!r}: {why}" for m in members if (why := member_problem(m, limits))]
    if refused:
        raise CheckpointError(
            f"{archive} was not extracted: it holds members segzoo never extracts ({len(refused)}): "
            + "; ".join(refused[:5])
            + (" ..." if len(refused) > 5 else "")
        )
    total = sum(m.size for m in members)
    if total > limits.total_bytes:
        raise CheckpointError(
            f"{archive} unpacks to {total} bytes, over the {limits.total_bytes} byte limit "
            f"(raise {limits.variable('total_bytes')} for a file you trust)"
        )
    return members


def checkpoint_members(members: list[Member]) -> list[Member]:
    """The members that may hold the checkpoint, in archive order: files with a checkpoint suffix, else archives
    (a checkpoint packed twice)."""
    files = [m for m in members if m.isfile()]
    checkpoints = [m for m in files if m.name.lower().endswith(CHECKPOINT_SUFFIXES)]
    return checkpoints or [m for m in files if m.name.lower().endswith(ARCHIVE_SUFFIXES)]


def choose_member(archive: Path, members: list[Member], member_name: str | None = None) -> Member:
    """The member of ``archive`` to read: ``member_name`` (an entry's recorded member), else the only candidate.

    A nested archive that is the only candidate is chosen whatever
    ``member_name`` says: the name is looked for inside it.
    """
    candidates = checkpoint_members(members)
    if member_name is not None:
        named = [m for m in members if m.isfile() and m.name == member_name]
        if len(named) == 1:
            return named[0]
        if len(candidates) == 1 and candidates[0].name.lower().endswith(ARCHIVE_SUFFIXES):
            return candidates[0]
    if len(candidates) == 1 and member_name is None:
        return candidates[0]
    listed = ", ".join(f"{m.name} ({m.size:,} bytes)" for m in candidates[:10]) + (
        " ..." if len(candidates) > 10 else ""
    )
    if member_name is not None:
        raise CheckpointError(
            f"{archive} has no single member {member_name!r}; its checkpoint files: {listed or 'none'}"
        )
    if not candidates:
        raise CheckpointError(
            f"{archive} holds no checkpoint (no file ending in {', '.join(CHECKPOINT_SUFFIXES)}); "
            f"`segzoo inspect {archive}` lists what it holds"
        )
    raise CheckpointError(
        f"{archive} holds {len(candidates)} checkpoint files and nothing says which one to read: {listed}; "
        f"extract the one you mean and pass that file"
    )


def _sweep_stale(root: Path) -> None:
    """Remove scratch folders whose process is gone (on this host) or that are older than a day (any host)."""
    host = socket.gethostname()
    for folder in root.iterdir():
        owner_host, _, rest = folder.name.rpartition("@")
        pid = rest.split("-", 1)[0]
        try:
            age = time.time() - folder.stat().st_mtime
        except OSError:
            continue
        dead = owner_host == host and pid.isdigit() and not process_exists(int(pid))
        if dead or age > SCRATCH_STALE_AFTER_S:
            shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def scratch_folder() -> Iterator[Path]:
    """A fresh folder in ``<cache>/tmp`` for expanded bytes, removed afterwards; those a killed process left
    behind are removed first."""
    root = cache_dir() / SCRATCH_FOLDER_NAME
    try:
        root.mkdir(parents=True, exist_ok=True)
        _sweep_stale(root)
        folder = Path(tempfile.mkdtemp(prefix=f"{socket.gethostname()}@{os.getpid()}-", dir=root))
    except OSError as err:
        raise CheckpointError(
            f"cannot make a scratch folder in {root} to extract an archive into ({err}); set SEGZOO_CACHE to a "
            f"writable folder"
        ) from err
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def extract_member(archive: Path, member: Member, folder: Path, limits: ArchiveLimits | None = None) -> Path:
    """Stream ``member`` of ``archive`` into ``folder`` under its own base name, counting the bytes; returns it."""
    limits = limits or ArchiveLimits.from_env()
    path = folder / PurePosixPath(member.name).name
    what = f"{archive}: {member.name}"
    try:
        with _opened_member(archive, member, limits) as stream, open(path, "wb") as out:
            _copy_at_most(stream, out, member.size, what)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as err:
        raise CheckpointError(f"{what} cannot be read (truncated or damaged?): {err}") from err
    return path


@contextmanager
def extracted_checkpoint(
    archive: Path, member_name: str | None = None, limits: ArchiveLimits | None = None
) -> Iterator[Path]:
    """A temporary file holding the archive's checkpoint (``member_name``, or the only checkpoint-like file),
    opening archives inside it in turn, at most ``limits.depth`` deep."""
    limits = limits or ArchiveLimits.from_env()
    current, depth = Path(archive), 1
    chosen = choose_member(current, safe_members(current, limits), member_name)  # judged before a byte is written
    with scratch_folder() as scratch:
        while True:
            level = scratch / str(depth)
            level.mkdir()
            extracted = extract_member(current, chosen, level, limits)
            if current != Path(archive):
                shutil.rmtree(current.parent)  # the previous level's file: only one is kept at a time
            if archive_kind(extracted) is None:
                break
            if depth >= limits.depth:
                raise CheckpointError(
                    f"{archive} holds archives nested more than {limits.depth} deep ({chosen.name} is one more); "
                    f"refusing it (raise {limits.variable('depth')} for a file you trust)"
                )
            current, depth = extracted, depth + 1
            chosen = choose_member(current, safe_members(current, limits), member_name)
        yield extracted


@contextmanager
def _opened_member(archive: Path, member: Member, limits: ArchiveLimits) -> Iterator[IO[bytes]]:
    if isinstance(member, ZipMember):
        with zipfile.ZipFile(archive) as zf, zf.open(member.name) as stream:
            yield stream
        return
    with _open_tar(archive, limits) as tar:
        for candidate in tar:
            if candidate.name == member.name and candidate.offset == member.offset:
                stream = tar.extractfile(candidate)
                break
        else:
            stream = None
        if stream is None:
            raise CheckpointError(f"{archive}: {member.name} cannot be read")
        with stream:
            yield stream


def _copy_at_most(stream: IO[bytes], out: IO[bytes], limit: int, what: str) -> None:
    """Copy ``stream`` to ``out``, refusing more than ``limit`` bytes (a member larger than it declares)."""
    copied = 0
    while chunk := stream.read(1 << 20):
        copied += len(chunk)
        if copied > limit:
            raise CheckpointError(f"{what} unpacks to more than the {limit} bytes it declares; refusing it")
        out.write(chunk)
