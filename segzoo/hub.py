"""segzoo's native layout (``config.json`` + ``model.safetensors`` + model card) and the Hugging Face hub."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import safetensors.torch

from segzoo._version import __version__
from segzoo.cards import render_model_card
from segzoo.segmentors import EncoderDecoder
from segzoo.weights import hf_hub
from segzoo.zoo.records import ModelInfo, to_plain

CARD_NAME = "README.md"


def _info_for(model: EncoderDecoder) -> ModelInfo:
    """The model's info, adjusted when its classifier no longer matches the entry."""
    info = model.require_info()
    if model.num_classes != info.num_classes:
        note = f"Derived from {info.name} with a new {model.num_classes}-class classifier; metrics are not inherited."
        info = dataclasses.replace(
            info, num_classes=model.num_classes, reported_metrics=(), weights=(), notes=(*info.notes, note)
        )
    return info


def save_pretrained(model: EncoderDecoder, folder: str | Path, repo_id: str | None = None) -> Path:
    """Write ``model`` in segzoo's native layout, the same as a Hugging Face repository's files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    info = _info_for(model)
    state_dict = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state_dict, folder / hf_hub.WEIGHTS_NAME, metadata={"format": "pt"})
    config = {"library": "segzoo", "segzoo_version": __version__, "info": to_plain(info)}
    (folder / hf_hub.CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    (folder / CARD_NAME).write_text(render_model_card(info, hf_repo_id=repo_id))
    return folder


def push_to_hub(
    model: EncoderDecoder,
    repo_id: str,
    *,
    commit_message: str = "Upload segzoo model",
    private: bool | None = None,
    revision: str | None = None,
    token: str | None = None,
) -> str:
    """Upload ``model`` (native layout and model card) to ``repo_id``; returns the commit URL."""
    from huggingface_hub import HfApi  # noqa: PLC0415 (huggingface_hub loads only when a model is pushed)

    api = HfApi(endpoint=hf_hub.endpoint(), token=token, library_name="segzoo", library_version=__version__)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, repo_id=repo_id)
        commit = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message, revision=revision)
    return commit.commit_url
