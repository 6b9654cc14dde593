"""Immutable records describing a zoo entry: what it is, where its weights live, what the paper reports."""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from types import MappingProxyType
from typing import Any, Literal, TypeVar

T = TypeVar("T")

# How a checkpoint file wraps its state dict: an mmcv runner checkpoint ({"state_dict", "meta"}), a detectron2
# checkpoint ({"model", "iteration"} or a bare state dict), a segzoo .safetensors file, or a bare state dict.
CheckpointFormat = Literal["mmseg", "detectron2", "safetensors", "pytorch"]
# Where a source's file comes from: a plain http(s) URL; a segzoo-native Hugging Face repository; an archive at a
# URL that packs the checkpoint with other files; a share page that needs a person (login, extraction code);
# a Google Drive file id.
SourceKind = Literal["url", "hf-hub", "archive", "manual", "google-drive"]
HF_HUB_PREFIX = "hf-hub:"


def _freeze(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


def _rebuild_record(cls: type[T], values: dict[str, Any]) -> T:
    return cls(**values)


def to_plain(value: Any) -> Any:
    """JSON-ready copy of a record: dataclasses and mappings become dicts, tuples become lists."""
    if is_dataclass(value):
        views = value.plain_views() if hasattr(value, "plain_views") else {}
        return {**{f.name: to_plain(getattr(value, f.name)) for f in fields(value)}, **views}
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [to_plain(v) for v in value]
    return value


def from_plain(cls: type[T], data: Mapping[str, Any]) -> T:
    """Rebuild a record written by :func:`to_plain` (e.g. from a ``config.json``)."""
    hints = typing.get_type_hints(cls)
    if hasattr(cls, "upgraded_plain"):
        data = cls.upgraded_plain(data)
    kwargs = {}
    for f in fields(cls):
        if f.name in data:
            kwargs[f.name] = _from_plain_value(hints[f.name], data[f.name])
    return cls(**kwargs)


def _from_plain_value(hint: Any, value: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and value is not None:  # X | None: rebuild as X
        (hint,) = [a for a in args if a is not type(None)]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if is_dataclass(hint) and isinstance(value, Mapping):
        return from_plain(hint, value)
    if origin is tuple and isinstance(value, list):
        item_hint = args[0] if len(args) == 2 and args[1] is Ellipsis else Any
        return tuple(_from_plain_value(item_hint, v) for v in value)
    return value


@dataclass(frozen=True)
class Paper:
    title: str
    arxiv_id: str
    venue: str


@dataclass(frozen=True)
class WeightSource:
    """A checkpoint to fetch and how: see :data:`SourceKind`.

    ``url`` is an http(s) URL, ``hf-hub:ORG/REPO[@REVISION]``, a share page
    (``manual``, with its ``access_code``) or a Google Drive file URL.
    ``filename`` is the name the file has in the cache and in mirrors: the
    URL's last part unless given (share pages and Drive need it given).
    ``sha256``/``size`` are ``None`` until someone has pinned them.
    ``member`` names the checkpoint inside an ``archive`` where its release
    says which it is; an archive with several candidates and no ``member``
    is refused rather than guessed at.
    """

    url: str
    format: CheckpointFormat
    sha256: str | None = None
    size: int | None = None
    kind: SourceKind = "url"
    filename: str | None = None
    access_code: str | None = None
    member: str | None = None

    def __post_init__(self) -> None:
        if self.url.startswith(HF_HUB_PREFIX) and self.kind != "hf-hub":
            object.__setattr__(self, "kind", "hf-hub")
        if self.kind in ("manual", "google-drive") and not self.filename:
            raise ValueError(f"a {self.kind} weight source needs a filename: {self.url}")
        if not self.filename:
            object.__setattr__(self, "filename", self.url.rsplit("/", 1)[-1])

    @staticmethod
    def upgraded_plain(data: Mapping[str, Any]) -> Mapping[str, Any]:
        """``data`` of a config.json written when ``filename`` was called ``file_name``, with today's keys."""
        return {("filename" if key == "file_name" else key): value for key, value in data.items()}

    @property
    def is_hf_hub(self) -> bool:
        return self.kind == "hf-hub"


# What a reported number is, whatever the paper's table calls it: the evaluators' means over classes of IoU and of
# accuracy, the accuracy over all pixels, the frequency-weighted IoU, and Cityscapes' instance-level (iIoU) and
# category-level means.
MetricKey = Literal[
    "mean_iou",
    "mean_accuracy",
    "pixel_accuracy",
    "frequency_weighted_iou",
    "mean_instance_iou",
    "category_mean_iou",
    "category_mean_instance_iou",
]
# How the number was measured: one forward at the test scale, or the multi-scale + flip test (aug-test).
TestMode = Literal["single_scale", "multi_scale_flip"]


@dataclass(frozen=True)
class ReportedMetric:
    """One number of the paper's table: what it is (``key`` in ``test_mode``) and the ``label`` the table gives it."""

    key: MetricKey
    label: str
    value: float
    test_mode: TestMode = "single_scale"


# label -> (key, test mode) of every number of a config.json written before the metrics carried their keys
_OLD_METRIC_LABELS: dict[str, tuple[MetricKey, TestMode]] = {
    "mIoU": ("mean_iou", "single_scale"),
    "mAcc": ("mean_accuracy", "single_scale"),
    "aAcc": ("pixel_accuracy", "single_scale"),
    "PA": ("pixel_accuracy", "single_scale"),
    "mean PA": ("mean_accuracy", "single_scale"),
    "mean IoU": ("mean_iou", "single_scale"),
    "FW IoU": ("frequency_weighted_iou", "single_scale"),
    "IoU class": ("mean_iou", "single_scale"),
    "iIoU class": ("mean_instance_iou", "single_scale"),
    "IoU category": ("category_mean_iou", "single_scale"),
    "iIoU category": ("category_mean_instance_iou", "single_scale"),
    "mIoU (MS)": ("mean_iou", "multi_scale_flip"),
    "mIoU (ms+flip)": ("mean_iou", "multi_scale_flip"),
}


@dataclass(frozen=True)
class Normalization:
    """How pixels become model input: ``(pixel - mean) / std`` on ``channel_order`` values in [0, 255]."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: Literal["RGB", "BGR"] = "RGB"


# ImageNet's mean and std on 0-255 RGB pixels: the normalization of every mmseg config here (and GloRe's assumption).
IMAGENET_RGB = Normalization(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), channel_order="RGB")


@dataclass(frozen=True)
class InferencePipeline:
    """The upstream test-time preprocessing, inference mode and test-time augmentation.

    ``scale`` is mmseg's ``img_scale`` (long edge, short edge) for a keep-ratio
    resize; ``size_divisor`` rounds the resized image up to a multiple of it by
    a second resize (MogaNet's ``AlignResize``), or is ``None``. ``slide`` mode
    runs ``crop_size`` windows every ``stride`` pixels (both (h, w)); when the
    entry does not set them, the training crop and two thirds of it are used.
    ``aug_ratios``/``aug_flip`` are mmseg's multi-scale + flip test (aug-test).

    ``resize`` names the resize rule: ``keep_ratio`` is mmcv's (OpenCV
    bilinear on 8-bit images, ``scale`` as above); ``shortest_edge`` is
    detectron2's ``ResizeShortestEdge`` (PIL bilinear, ``scale`` = (shortest
    edge, longest-edge cap)). ``slide_windows`` says how slide mode treats
    the last window of a row or column: ``shift`` moves it back to end at the
    border (mmseg's ``slide_inference``), ``pad`` zero-pads every window to
    ``crop_size`` (RegionProxy's own slide routine). ``rescale_align_corners``
    is the ``align_corners`` of the final resize of the scores to the image
    size; ``None`` means the model's own.
    """

    scale: tuple[int, int]
    size_divisor: int | None = None
    mode: Literal["whole", "slide"] = "whole"
    crop_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    aug_ratios: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    aug_flip: bool = True
    resize: Literal["keep_ratio", "shortest_edge"] = "keep_ratio"
    slide_windows: Literal["shift", "pad"] = "shift"
    rescale_align_corners: bool | None = None


@dataclass(frozen=True)
class UpstreamConfig:
    repo: str
    path: str
    commit: str


@dataclass(frozen=True)
class ModelInfo:
    """Everything segzoo knows about one published model; numbers are as the source README reports them.

    ``params_m``/``flops_g`` are ``None`` where the table gives none
    (``num_params`` is always the exact count of the model);
    ``flops_input_shape`` is the (C, H, W) of the input the FLOPs were counted on.
    ``reported_metrics`` are the numbers of the paper's table, each with its
    canonical key and test mode beside the table's label; they were measured on
    the ``metrics_split`` of ``dataset`` (``test``: an evaluation server) and
    ``evaluator`` names the convention that computed them: ``mmseg``
    (mmsegmentation 0.x), ``detectron2_2019`` (detectron2's ``SemSegEvaluator``
    as of 2019) or ``cityscapes`` (the official cityscapesScripts evaluation).
    ``reported_costs`` holds the table's other columns, e.g.
    ``{"train time (s/iter)": 0.81, "inference time (s/im)": 0.11}``.
    ``pretrained_backbone`` is the ImageNet classification file the paper's
    segmentation training starts from (``None`` where the paper names none;
    the notes say why); :func:`segzoo.registry.load_imagenet_backbone` loads it.
    """

    name: str
    family: str
    paper: Paper
    backbone: str
    head: str
    dataset: str
    num_classes: int
    crop_size: tuple[int, int]
    normalization: Normalization
    test_pipeline: InferencePipeline
    align_corners: bool
    reported_metrics: tuple[ReportedMetric, ...]
    params_m: float | None
    flops_g: float | None
    flops_input_shape: tuple[int, int, int] | None
    num_params: int
    train_iters: int
    train_batch_size: int
    weights: tuple[WeightSource, ...]
    license: str
    citation: str
    upstream: UpstreamConfig
    architecture: str
    arch_args: Mapping[str, Any] = field(default_factory=dict)
    evaluator: Literal["mmseg", "detectron2_2019", "cityscapes"] = "mmseg"
    metrics_split: Literal["val", "test"] = "val"
    reported_costs: Mapping[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    pretrained_backbone: WeightSource | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "arch_args", _freeze(self.arch_args))
        object.__setattr__(self, "reported_costs", _freeze(self.reported_costs))

    def __deepcopy__(self, memo: dict) -> ModelInfo:
        return self  # immutable all the way down: ``copy.deepcopy(model)`` shares it

    def __reduce__(self) -> tuple:
        """Pickled (``torch.save(model)``, worker processes) as its fields, the read-only mappings as dicts."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return _rebuild_record, (type(self), {k: dict(v) if isinstance(v, Mapping) else v for k, v in values.items()})

    @staticmethod
    def upgraded_plain(data: Mapping[str, Any]) -> Mapping[str, Any]:
        """``data`` of a config.json written when the numbers were ``metrics``, label -> value, with today's keys
        (``metrics`` is still written, as a view: see :meth:`plain_views`)."""
        if "reported_metrics" in data or "metrics" not in data:
            return {k: v for k, v in data.items() if k != "metrics"}
        reported = [
            {
                "key": _OLD_METRIC_LABELS[label][0],
                "label": label,
                "value": value,
                "test_mode": _OLD_METRIC_LABELS[label][1],
            }
            for label, value in data["metrics"].items()
        ]
        return {**{k: v for k, v in data.items() if k != "metrics"}, "reported_metrics": reported}

    def plain_views(self) -> dict[str, Any]:
        """What :func:`to_plain` writes beside the fields: ``metrics`` under the paper's labels, as ``config.json``
        and ``segzoo info`` showed the numbers before each carried its canonical key (read back, it is ignored)."""
        return {"metrics": dict(self.metrics)}

    @property
    def metrics(self) -> Mapping[str, float]:
        """The reported numbers under the paper's labels: ``{"mIoU": 47.7, "mAcc": 59.8}``."""
        return MappingProxyType({metric.label: metric.value for metric in self.reported_metrics})

    @property
    def metrics_text(self) -> str:
        """The reported metrics as one phrase: ``mIoU 47.7, mAcc 59.8``."""
        return ", ".join(f"{k} {v}" for k, v in self.metrics.items())

    @property
    def summary(self) -> str:
        """One line: what the model is and how well it does."""
        return (
            f"{self.backbone} + {self.head} on {self.dataset} ({self.num_classes} classes): "
            f"{self.metrics_text}; {self.params_m or round(self.num_params / 1e6, 1)}M params "
            f"({self.paper.title}, arXiv:{self.paper.arxiv_id})"
        )
