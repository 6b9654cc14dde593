"""Load an entry's published weights: try its sources in order, verify, trust on first use."""
from __future__ import annotations

import logging
from collections.abc import Iterable

from torch import nn

from segzoo.weights.cache import ChecksumLock, cache_dir, file_sha256
from segzoo.weights.checkpoint import load_state_dict_strict, read_state_dict
from segzoo.weights.errors import CheckpointError, WeightsUnavailableError
from segzoo.weights.fetch import fetch_weights
from segzoo.zoo.records import ModelInfo, WeightSource

log = logging.getLogger(__name__)


def load_pretrained(
    model: nn.Module, info: ModelInfo, skip: Iterable[str] = (), progress: bool | None = None
) -> WeightSource:
    """Load the first of ``info.weights`` that can be fetched into ``model``; returns the source used.

    A file with no known checksum that fails the strict load is removed from
    the cache; one that passes has its sha256 recorded (trust on first use).
    """
    failures = []
    for source in info.weights:
        try:
            fetched = fetch_weights(source, progress)
        except WeightsUnavailableError as err:
            log.warning("%s: source %s unavailable, trying the next one", info.name, source.url)
            failures.append(f"- {source.url}: {err}")
            continue
        lock = None if source.is_hf_hub else ChecksumLock(cache_dir())
        try:
            load_state_dict_strict(model, read_state_dict(fetched.path), str(fetched.path), skip=skip)
        except CheckpointError:
            if lock is not None and lock.expected_sha256(source) is None:
                fetched.path.unlink(missing_ok=True)
                log.warning("removed %s from the cache: it does not load into %s", fetched.path, info.name)
            raise
        if lock is not None and lock.get(source) is None:
            lock.record(source, fetched.path, fetched.sha256 or file_sha256(fetched.path))
        log.info("%s: loaded weights from %s (%s)", info.name, source.url, fetched.path)
        return source
    raise WeightsUnavailableError(f"no weight source of {info.name} could be fetched:\n" + "\n".join(failures))
