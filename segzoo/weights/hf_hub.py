"""Files of segzoo-native Hugging Face repositories, through ``huggingface_hub`` (its cache, offline flag, revisions).

A repository holds ``config.json`` (the entry's info: architecture, arguments,
pipeline, metrics) and ``model.safetensors`` (the state dict in segzoo's layout).
"""

from __future__ import annotations

import os
from pathlib import Path

from segzoo.weights.errors import WeightsUnavailableError
from segzoo.zoo.records import HF_HUB_PREFIX

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``hf-hub:ORG/REPO@REV`` -> (``ORG/REPO``, ``REV`` or ``None``)."""
    repo = spec.removeprefix(HF_HUB_PREFIX)
    repo_id, _, revision = repo.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"expected hf-hub:ORG/REPO[@REVISION], got {spec!r}")
    return repo_id, revision or None


def endpoint() -> str | None:
    """The hub endpoint, read at call time so that ``HF_ENDPOINT`` can change within a process."""
    return os.environ.get("HF_ENDPOINT") or None


def download_file(spec: str, filename: str, local_only: bool = False) -> Path:
    """Path of ``filename`` of the repository ``spec`` in the Hugging Face cache, downloading it if needed."""
    from huggingface_hub import hf_hub_download  # noqa: PLC0415 (huggingface_hub loads only for hf-hub: sources)
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError  # noqa: PLC0415

    repo_id, revision = parse_spec(spec)
    try:
        return Path(
            hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                endpoint=endpoint(),
                local_files_only=local_only,
                library_name="segzoo",
            )
        )
    except LocalEntryNotFoundError as err:
        if not local_only:
            raise WeightsUnavailableError(f"{filename} of {spec} could not be downloaded: {err}") from err
        from huggingface_hub import constants  # noqa: PLC0415

        raise WeightsUnavailableError(
            f"segzoo is offline (SEGZOO_OFFLINE / HF_HUB_OFFLINE) and {filename} of {spec} is not in the Hugging "
            f"Face cache ({constants.HF_HUB_CACHE}); unset those variables to download it once"
        ) from err
    except (HfHubHTTPError, OSError) as err:
        raise WeightsUnavailableError(f"{filename} of {spec} could not be downloaded: {err}") from err
