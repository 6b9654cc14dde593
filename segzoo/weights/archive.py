"""Checkpoints packed in tar or zip archives with other files (GloRe publishes its weights with its code,
EMANet's ImageNet ResNets come zipped).

Nothing in an archive is executed or imported. Before anything is read the
whole member list is checked, with the same rules for both kinds: regular
files and folders only (no links, devices or FIFOs), relative names without
``..``, and bounded counts and sizes. Only the checkpoint member is extracted,
by streaming at most its declared size to a file segzoo names itself.

A zip that ``torch.save`` wrote (a ``data.pkl`` member) is a checkpoint, not
an archive: :func:`is_zip_archive` tells them apart.
"""

from __future__ import annotations

import logging
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from segzoo.weights.errors import CheckpointError

log = logging.getLogger(__name__)

MAX_MEMBERS = 10_000
MAX_MEMBER_BYTES = 8 << 30
MAX_TOTAL_BYTES = 16 << 30
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".pth.tar", ".ckpt", ".pkl", ".safetensors", ".bin")
ZIP_MAGIC = b"PK\x03\x04"  # a zip's first local file header, also where torch.save's zip format starts


@dataclass(frozen=True)
class ZipMember:
    """A zip entry seen like a ``tarfile.TarInfo``: name, declared (uncompressed) size, kind, link target."""

    name: str
    size: int
    mode: int  # the Unix mode in the entry's external attributes; no file-type bits when written elsewhere

    @classmethod
    def of(cls, info: zipfile.ZipInfo) -> ZipMember:
        return cls(info.filename, info.file_size, info.external_attr >> 16)

    @property
    def linkname(self) -> str:
        return "(target stored in the member)"

    def isdir(self) -> bool:
        return self.name.endswith("/") or stat.S_ISDIR(self.mode)

    def issym(self) -> bool:
        return stat.S_ISLNK(self.mode)

    def islnk(self) -> bool:
        return False

    def isfile(self) -> bool:
        return not self.isdir() and (stat.S_IFMT(self.mode) == 0 or stat.S_ISREG(self.mode))


Member = tarfile.TarInfo | ZipMember


def is_zip_archive(path: Path) -> bool:
    """Whether ``path`` is a zip of files rather than a checkpoint ``torch.save`` wrote in its zip format.

    The file must start as a zip does: ``zipfile.is_zipfile`` alone also accepts a tar whose last member
    is a zip, and its listing would then be that member's.
    """
    try:
        with open(path, "rb") as f:
            if f.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
                return False
        with zipfile.ZipFile(path) as zf:
            return not any(name.endswith("/data.pkl") or name == "data.pkl" for name in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def member_problem(member: Member) -> str | None:
    """Why ``member`` is refused, or ``None``."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or member.name.startswith(("/", "\\")) or ":" in name.parts[0]:
        return "absolute path"
    if ".." in name.parts:
        return "path with '..'"
    if member.issym() or member.islnk():
        return f"link to {member.linkname!r}"
    if not (member.isfile() or member.isdir()):
        return "device, FIFO or other special file"
    if member.size > MAX_MEMBER_BYTES:
        return f"{member.size} bytes, over the {MAX_MEMBER_BYTES} byte limit"
    return None


def list_members(archive: Path) -> list[Member]:
    """The members of a tar or zip ``archive``, unchecked (at most :data:`MAX_MEMBERS`)."""
    too_many = CheckpointError(f"{archive} has more than {MAX_MEMBERS} members; refusing to read it")
    if is_zip_archive(archive):
        try:
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise CheckpointError(f"{archive} is not a readable zip archive (truncated or damaged?): {err}") from err
        if len(infos) > MAX_MEMBERS:
            raise too_many
        return [ZipMember.of(info) for info in infos]
    try:
        with tarfile.open(archive, "r:*") as tar:
            members: list[Member] = []
            for member in tar:
                members.append(member)
                if len(members) > MAX_MEMBERS:
                    raise too_many
    except (tarfile.TarError, OSError, EOFError) as err:
        raise CheckpointError(f"{archive} is not a readable tar archive (truncated or damaged?): {err}") from err
    return members


def safe_members(archive: Path) -> list[Member]:
    """The members of ``archive`` (tar or zip), after checking every one of them; refuses the archive on any
    bad member."""
    members = list_members(archive)
    refused = [f"{m.name!r}: {why}" for m in members if (why := member_problem(m))]
    if refused:
        raise CheckpointError(
            f"{archive} was not extracted: it holds members segzoo never extracts ({len(refused)}): "
            + "; ".join(refused[:5])
            + (" ..." if len(refused) > 5 else "")
        )
    total = sum(m.size for m in members)
    if total > MAX_TOTAL_BYTES:
        raise CheckpointError(f"{archive} unpacks to {total} bytes, over the {MAX_TOTAL_BYTES} byte limit")
    return members


def checkpoint_members(members: list[Member]) -> list[Member]:
    """The members that look like checkpoints, largest first."""
    found = [m for m in members if m.isfile() and m.name.lower().endswith(CHECKPOINT_SUFFIXES)]
    return sorted(found, key=lambda m: -m.size)


@contextmanager
def extracted_checkpoint(archive: Path, member_name: str | None = None) -> Iterator[Path]:
    """A temporary file holding the archive's checkpoint (``member_name``, or the largest checkpoint-like file)."""
    candidates = checkpoint_members(safe_members(archive))
    if member_name is not None:
        candidates = [m for m in candidates if m.name == member_name]
    if not candidates:
        raise CheckpointError(
            f"{archive} holds no checkpoint ({member_name or 'no file ending in ' + ', '.join(CHECKPOINT_SUFFIXES)}); "
            f"`segzoo inspect {archive}` lists what it holds"
        )
    chosen = candidates[0]
    if len(candidates) > 1:
        log.info("%s: reading %s, the largest of %d checkpoint files", archive, chosen.name, len(candidates))
    with tempfile.TemporaryDirectory(prefix="segzoo-archive-") as tmp:
        path = Path(tmp) / PurePosixPath(chosen.name).name  # the member's own name, in a folder segzoo made
        with _opened_member(archive, chosen) as stream, open(path, "wb") as out:
            _copy_at_most(stream, out, chosen.size, f"{archive}: {chosen.name}")
        yield path


@contextmanager
def _opened_member(archive: Path, member: Member) -> Iterator[IO[bytes]]:
    try:
        if isinstance(member, ZipMember):
            with zipfile.ZipFile(archive) as zf, zf.open(member.name) as stream:
                yield stream
            return
        with tarfile.open(archive, "r:*") as tar:
            stream = tar.extractfile(member.name)
            if stream is None:
                raise CheckpointError(f"{archive}: {member.name} cannot be read")
            with stream:
                yield stream
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as err:  # zip CRC/size checks fail here too
        raise CheckpointError(f"{archive}: {member.name} cannot be read (truncated or damaged?): {err}") from err


def _copy_at_most(stream: IO[bytes], out: IO[bytes], limit: int, what: str) -> None:
    """Copy ``stream`` to ``out``, refusing more than ``limit`` bytes (a member larger than it declares)."""
    copied = 0
    while chunk := stream.read(1 << 20):
        copied += len(chunk)
        if copied > limit:
            raise CheckpointError(f"{what} unpacks to more than the {limit} bytes it declares; refusing it")
        out.write(chunk)
