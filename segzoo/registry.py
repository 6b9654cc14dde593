"""Find, describe and build zoo models by name."""

from __future__ import annotations

import functools
import json
import numbers
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from segzoo.families import Family, build_architecture, convert_imagenet_state_dict, convert_state_dict, families
from segzoo.features import FeatureExtractor, feature_extractor
from segzoo.optimize import optimize_for_inference
from segzoo.segmentors import EncoderDecoder
from segzoo.weights import (
    UnsafeCheckpointError,
    hf_hub,
    load_imagenet_weights,
    load_pretrained,
    load_state_dict_strict,
    offline,
    read_state_dict,
)
from segzoo.zoo import ModelInfo
from segzoo.zoo.catalog import Catalog, UnknownModelError  # noqa: F401 (segzoo.registry.UnknownModelError, as before)
from segzoo.zoo.records import HF_HUB_PREFIX, from_plain


@functools.cache
def _catalog_of(registered: tuple[Family, ...]) -> Catalog:
    return Catalog.of(info for family in registered for info in family.entries)


def _catalog() -> Catalog:
    """The catalog of the families registered now (a family registered later, e.g. a plug-in's, is included)."""
    return _catalog_of(families())


def entries() -> tuple[ModelInfo, ...]:
    """Every registered entry's record, family by family."""
    return tuple(_catalog().by_name.values())


class ClassifierReinitializedWarning(UserWarning):
    """Weights were loaded for another number of classes: the classifier layers start from random values."""


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Sorted registered names matching the fnmatch ``pattern``; with ``pretrained``, only those with weights."""
    return _catalog().names(pattern, pretrained)


def list_aliases() -> dict[str, str]:
    """Short names (the full name without the dataset) and the entry each stands for."""
    return dict(sorted(_catalog().aliases.items()))


def resolve_name(name: str) -> str:
    """The registered name for ``name`` or its alias."""
    return _catalog().resolve(name)


def model_info(name: str) -> ModelInfo:
    """The immutable record of a registered model (name or alias)."""
    return _catalog().info(name)


def create_model(
    name: str,
    pretrained: bool = False,
    num_classes: int | None = None,
    checkpoint_path: str | Path | None = None,
    allow_unsafe_pickle: bool = False,
    progress: bool | None = None,
    verify: bool | None = None,
    fuse: bool = False,
    dtype: torch.dtype = torch.float32,
    **kwargs: Any,
) -> EncoderDecoder:
    """Build a registered model, in eval mode, optionally with weights.

    ``pretrained`` loads the entry's published weights, trying its sources in
    order (downloaded once into the cache, verified); ``checkpoint_path`` loads
    a local file instead: an original mmseg checkpoint or a segzoo
    ``.safetensors`` file. ``hf-hub:ORG/REPO[@REVISION]`` names a segzoo-native
    Hugging Face repository, whose weights are always loaded. Loading is
    strict, and a model that gets weights is never randomly initialized first.
    A ``num_classes`` other than the entry's keeps every loaded weight except
    the classifier layers, which are freshly initialized. ``verify=True`` (or
    ``SEGZOO_VERIFY=always``) re-hashes cached weight files on this load even
    when their size and mtime are unchanged. Other keyword arguments go to the
    architecture builder (e.g. ``drop_path_rate``). ``fuse=True`` returns the eval-only
    inference fast path of :func:`segzoo.optimize_for_inference` (same outputs, faster); with it,
    ``dtype=torch.bfloat16`` gives the bf16 fast path (bf16 weights and activations but where float32 is needed).
    """
    _check_num_classes(num_classes)
    if dtype != torch.float32 and not fuse:
        raise ValueError(f"dtype={dtype} needs fuse=True: only the inference fast path runs in another dtype")
    from_hub = name.startswith(HF_HUB_PREFIX)
    info = _hub_info(name) if from_hub else model_info(name)
    classes = info.num_classes if num_classes is None else num_classes
    with_weights = pretrained or checkpoint_path is not None or from_hub
    model = _build(info, classes, kwargs, initialize=not with_weights)
    if with_weights:
        classifiers = model.classifier_names() if classes != info.num_classes else []
        if from_hub:
            reinit = _load_from_hub(model, name, classifiers)
        elif checkpoint_path is not None:
            reinit = _load_from_file(model, checkpoint_path, classifiers, allow_unsafe_pickle)
        else:
            reinit = _load_published(model, classifiers, progress, verify)
        if reinit:
            warnings.warn(
                f"{info.name}: num_classes={classes} differs from the checkpoint's classifier; "
                f"kept all weights but re-initialized {', '.join(reinit)}",
                ClassifierReinitializedWarning,
                stacklevel=2,
            )
    if fuse:
        return optimize_for_inference(model, inplace=True, dtype=dtype)
    return model.eval()


def _check_num_classes(num_classes: object) -> None:
    """Refuse, before anything is built or fetched, a ``num_classes`` that is not a positive integer."""
    if num_classes is not None and (
        not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool) or num_classes < 1
    ):
        raise ValueError(
            f"num_classes must be a positive integer (how many classes your labels have), got {num_classes!r}"
        )


def _hub_info(name: str) -> ModelInfo:
    """The entry record in the ``config.json`` of the ``hf-hub:ORG/REPO[@REVISION]`` repository ``name``."""
    config_path = hf_hub.download_file(name, hf_hub.CONFIG_NAME, local_only=offline())
    return from_plain(ModelInfo, json.loads(config_path.read_text())["info"])


def _build(info: ModelInfo, num_classes: int, builder_args: dict[str, Any], initialize: bool) -> EncoderDecoder:
    """The entry's architecture for ``num_classes`` classes, carrying ``info``; on the meta device, for weights
    to be assigned, unless ``initialize``."""
    model = build_architecture(
        info.architecture, initialize=initialize, **{**info.arch_args, **builder_args, "num_classes": num_classes}
    )
    model.info = info
    return model


def _load_from_hub(model: EncoderDecoder, name: str, classifiers: list[str]) -> list[str]:
    """Load the weights of the segzoo-native repository ``name``; returns the classifiers re-initialized.

    The file stays memory-mapped: the hub's cache stores it content-addressed and never rewrites it in place.
    """
    path = hf_hub.download_file(name, hf_hub.WEIGHTS_NAME, local_only=offline())
    state_dict = read_state_dict(path)
    reinit = _classifiers_to_reinit(model, state_dict, classifiers)
    load_state_dict_strict(model, state_dict, f"{name} ({path})", skip=reinit)
    return reinit


def _load_from_file(
    model: EncoderDecoder, path: str | Path, classifiers: list[str], allow_unsafe_pickle: bool
) -> list[str]:
    """Load the user's checkpoint file ``path`` (original or segzoo layout); returns the classifiers re-initialized.

    The file is read into memory the model owns, not mapped: the user may rewrite or truncate it later.
    """
    try:
        state_dict = read_state_dict(path, allow_unsafe_pickle=allow_unsafe_pickle, mapped=False)
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(
            f"{err}; if you trust this file, pass allow_unsafe_pickle=True (--allow-unsafe-pickle on the command line)."
        ) from err
    state_dict = convert_state_dict(model.info.architecture, state_dict)
    reinit = _classifiers_to_reinit(model, state_dict, classifiers)
    load_state_dict_strict(model, state_dict, str(path), skip=reinit)
    return reinit


def _load_published(
    model: EncoderDecoder, classifiers: list[str], progress: bool | None, verify: bool | None
) -> list[str]:
    """Load the entry's published weights through the cache; returns the classifiers re-initialized (all of
    ``classifiers``: published weights have the entry's classes)."""
    convert = functools.partial(convert_state_dict, model.info.architecture)
    load_pretrained(model, model.info, convert, skip=classifiers, progress=progress, verify=verify)
    return classifiers


def _classifiers_to_reinit(model: EncoderDecoder, state_dict: dict, candidates: list[str]) -> list[str]:
    """The classifier layers among ``candidates`` whose checkpoint tensors do not fit the model.

    A checkpoint fine-tuned to ``num_classes`` (``segzoo train --data custom:DIR``) keeps its classifier.
    """
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    return [
        name
        for name in candidates
        if any(k.startswith(f"{name}.") and v.shape != shapes.get(k) for k, v in state_dict.items())
    ]


def create_backbone(
    name: str,
    pretrained: bool | Literal["imagenet"] = True,
    out_indices: Sequence[int] | None = None,
    **kwargs: object,
) -> FeatureExtractor:
    """The encoder of entry ``name`` returning multi-scale features, like timm's ``features_only`` models.

    ``pretrained=True`` loads the encoder's part of the entry's segmentation
    weights, ``"imagenet"`` the ImageNet classification file the paper's
    training starts from (:func:`load_imagenet_backbone`),
    ``False`` leaves it randomly initialized. ``out_indices`` picks the
    features (see :mod:`segzoo.features`: stages 0-3 for the CNNs and EurNet,
    ViT layers for RegionProxy; default as its table says). The result has a
    ``feature_info`` with ``channels()``, ``reduction()`` and ``module_name()``
    per returned map, and is in eval mode. Other keyword arguments go to
    :func:`create_model` (e.g. ``checkpoint_path``, ``progress``).
    """
    if pretrained not in (True, False, "imagenet"):
        raise ValueError(f"pretrained must be True, False or 'imagenet', got {pretrained!r}")
    info = model_info(name)
    model = create_model(info.name, pretrained=pretrained is True, **kwargs)
    if pretrained == "imagenet":
        load_imagenet_backbone(model, info.name)
    extractor = feature_extractor(model.backbone, out_indices)
    extractor.info = info
    return extractor.eval()


def load_imagenet_backbone(
    model: nn.Module, name: str, *, progress: bool | None = None, verify: bool | None = None
) -> None:
    """Load entry ``name``'s ImageNet classification weights into ``model.backbone``, strictly.

    ``model`` is ``segzoo.create_model(name, pretrained=False)`` (or any model
    with the entry's backbone as ``.backbone``); the rest of it is left as is.
    The file is fetched and verified like the segmentation weights, converted
    by the family's ImageNet converter (classifier dropped, names and shapes
    adapted, e.g. a ViT's position grid resized to the training crop) and must
    then fit every backbone tensor (:func:`segzoo.weights.load_imagenet_weights`).
    """
    info = model_info(name)
    convert = functools.partial(convert_imagenet_state_dict, info.architecture)
    load_imagenet_weights(model, info, convert, progress, verify)
