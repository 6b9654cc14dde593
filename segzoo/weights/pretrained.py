"""Load an entry's published weights: try its sources in order, verify, trust on first use."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from segzoo.weights.cache import ChecksumLock, cache_dir, file_sha256
from segzoo.weights.checkpoint import load_state_dict_strict, read_state_dict
from segzoo.weights.converters import Converter
from segzoo.weights.errors import CheckpointError, WeightsUnavailableError
from segzoo.weights.fetch import fetch_weights, verify_always
from segzoo.zoo.records import ModelInfo, WeightSource

log = logging.getLogger(__name__)


def load_pretrained(
    model: nn.Module,
    info: ModelInfo,
    convert: Converter,
    skip: Iterable[str] = (),
    progress: bool | None = None,
    verify: bool | None = None,
) -> WeightSource:
    """Load the first of ``info.weights`` that can be fetched into ``model``; returns the source used.

    ``convert`` (the family's converter) maps an original checkpoint to
    segzoo's layout; a segzoo-native hub repository is loaded as it is.
    A file with no known checksum that fails the strict load is removed from
    the cache; one that passes has its sha256 recorded (trust on first use).
    A verified ``.pth`` file (or the checkpoint inside a verified archive)
    also gets a safetensors copy in the cache, with its own recorded sha256,
    which later loads read instead. ``verify`` re-hashes cached files even
    when unchanged (default: ``SEGZOO_VERIFY``).
    """
    verify = verify_always() if verify is None else verify
    failures = []
    for source in info.weights:
        try:
            fetched = fetch_weights(source, progress, verify)
        except WeightsUnavailableError as err:
            log.warning("%s: weights unavailable from %s", info.name, source.url)
            failures.append(f"- {source.url}: {err}")
            continue
        lock = None if source.is_hf_hub else ChecksumLock(cache_dir())
        copy = lock.derived_copy(source, fetched.path, verify) if lock is not None else None
        try:
            state_dict = read_state_dict(copy or fetched.path, member=source.member)
            if not source.is_hf_hub:
                state_dict = convert(state_dict)
            load_state_dict_strict(model, state_dict, str(fetched.path), skip=skip)
        except CheckpointError:
            if lock is not None and lock.expected_sha256(source) is None:
                fetched.path.unlink(missing_ok=True)
                log.warning("removed %s from the cache: it does not load into %s", fetched.path, info.name)
            raise
        if lock is not None and copy is None:
            sha256 = lock.expected_sha256(source) or fetched.sha256 or file_sha256(fetched.path)
            lock.record(source, fetched.path, sha256, derived=_write_safetensors_copy(fetched.path, state_dict))
        log.info("%s: loaded weights from %s (%s)", info.name, source.url, fetched.path)
        return source
    raise WeightsUnavailableError(f"no weight source of {info.name} could be fetched:\n" + "\n".join(failures))


def _write_safetensors_copy(path: Path, state_dict: Mapping[str, torch.Tensor]) -> Path | None:
    """Save the tensors just loaded from ``path`` as ``<name>.safetensors`` beside it."""
    if path.suffix == ".safetensors":
        return None
    copy = path.with_name(path.name.removesuffix(".pth").removesuffix(".tar") + ".safetensors")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{copy.name}.")
    os.close(fd)
    try:
        safetensors.torch.save_file(dict(state_dict), tmp)
        os.replace(tmp, copy)
    except (ValueError, RuntimeError, OSError) as err:  # e.g. tensors sharing memory
        log.info("no safetensors copy of %s: %s", path, err)
        return None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return copy
