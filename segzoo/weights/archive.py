"""Checkpoints packed in tar archives with other files (GloRe publishes its weights with its code).

Nothing in an archive is executed or imported. Before anything is read the
whole member list is checked: regular files and folders only (no links,
devices or FIFOs), relative names without ``..``, and bounded counts and
sizes. Only the checkpoint member is extracted, by streaming its bytes to a
file segzoo names itself.
"""
from __future__ import annotations

import logging
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from segzoo.weights.errors import CheckpointError

log = logging.getLogger(__name__)

MAX_MEMBERS = 10_000
MAX_MEMBER_BYTES = 8 << 30
MAX_TOTAL_BYTES = 16 << 30
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".pth.tar", ".ckpt", ".pkl", ".safetensors", ".bin")


def member_problem(member: tarfile.TarInfo) -> str | None:
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


def safe_members(archive: Path) -> list[tarfile.TarInfo]:
    """The members of ``archive``, after checking every one of them; refuses the archive on any bad member."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = []
            for member in tar:
                members.append(member)
                if len(members) > MAX_MEMBERS:
                    raise CheckpointError(f"{archive} has more than {MAX_MEMBERS} members; refusing to read it")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise CheckpointError(f"{archive} is not a readable tar archive (truncated or damaged?): {err}") from err
    refused = [f"{m.name!r}: {why}" for m in members if (why := member_problem(m))]
    if refused:
        raise CheckpointError(
            f"{archive} was not extracted: it holds members segzoo never extracts ({len(refused)}): "
            + "; ".join(refused[:5]) + (" ..." if len(refused) > 5 else "")
        )
    total = sum(m.size for m in members)
    if total > MAX_TOTAL_BYTES:
        raise CheckpointError(f"{archive} unpacks to {total} bytes, over the {MAX_TOTAL_BYTES} byte limit")
    return members


def checkpoint_members(members: list[tarfile.TarInfo]) -> list[tarfile.TarInfo]:
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
        with tarfile.open(archive, "r:*") as tar:
            stream = tar.extractfile(chosen.name)
            if stream is None:
                raise CheckpointError(f"{archive}: {chosen.name} cannot be read")
            with stream, open(path, "wb") as out:
                shutil.copyfileobj(stream, out, 1 << 20)
        yield path
