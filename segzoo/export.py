"""Export a registered model to ONNX, TorchScript or a ``torch.export`` ExportedProgram, checked against PyTorch.

The exported graph is the model a user runs: eval mode, normalized ``(1, 3, H, W)`` images in, logits
at the input resolution out (see ``EncoderDecoder``). Preprocessing (resize, normalization) and the
entry's sliding-window or multi-scale inference stay outside, as with ``model(images)``; the ONNX file
records the normalization in its metadata.

Which architecture exports in which format, and with which input sizes, each family records beside its
architectures (``Architecture.export``); an entry or size it rules out raises ``ExportNotSupported`` saying
why before any exporter runs. The model cards and the README's export table are generated from it.

ONNX goes through the dynamo-based ``torch.onnx.export(..., dynamo=True)``: it is torch's maintained
exporter (the TorchScript-based one is deprecated), it states dynamic height and width as
``torch.export`` dimensions, so ONNX and ExportedProgram share one capture of the graph and one set of
size limits, and it translates ops through onnxscript. TorchScript uses ``torch.jit.trace``: scripting
would need every module, timm's included, to be written in TorchScript's Python subset, while tracing
records the eval forward as it runs.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from segzoo.export_formats import EXPORT_FORMATS, MIN_DYNAMIC_SIDE, ExportFormat
from segzoo.families import FormatSupport, architecture, families
from segzoo.registry import create_model, model_info

if TYPE_CHECKING:
    from segzoo.segmentors import EncoderDecoder
    from segzoo.zoo.records import ModelInfo

log = logging.getLogger("segzoo")

FORMATS = EXPORT_FORMATS
FORMAT_NAMES = {"onnx": "ONNX", "torchscript": "TorchScript", "exported-program": "ExportedProgram"}
RELATIVE_TOLERANCE = 1e-4  # max |exported - PyTorch| over max |PyTorch|
_ONNX_SINGLE_FILE_LIMIT = 1_800_000_000  # protobuf's 2 GiB cap, with room for the graph; larger: a .data file


class ExportNotSupported(ValueError):
    """The entry cannot be exported in the asked format or with the asked input sizes; the message says why."""


class ExportCheckFailed(ValueError):
    """The exported model's outputs differ from PyTorch's by more than ``RELATIVE_TOLERANCE``."""


def export_support(info: ModelInfo, export_format: ExportFormat) -> FormatSupport:
    """The verdict of ``info``'s architecture (or its variant) for ``export_format``, as its family records it."""
    if export_format not in FORMATS:
        raise ValueError(f"unknown export format {export_format!r}; choose one of {', '.join(FORMATS)}")
    try:
        recorded = architecture(info.architecture)
    except KeyError:
        return FormatSupport("none", f"no export support is recorded for the architecture {info.architecture!r}")
    return recorded.export_support(info)[export_format]


def support_rows() -> list[tuple[list[str], Mapping[ExportFormat, FormatSupport]]]:
    """The support table: one row per architecture (and variant with verdicts of its own), with its entries."""
    rows: dict[tuple[str, int], tuple[list[str], Mapping[ExportFormat, FormatSupport]]] = {}
    for family in families():
        for info in sorted(family.entries, key=lambda entry: entry.name):
            support = architecture(info.architecture).export_support(info)
            rows.setdefault((info.architecture, id(support)), ([], support))[0].append(info.name)
    return list(rows.values())


def check_supported(info: ModelInfo, export_format: ExportFormat, dynamic: bool) -> None:
    """Raise ``ExportNotSupported`` when ``info``'s entry cannot be exported this way, saying what can."""
    support = export_support(info, export_format)
    if support.level == "dynamic" or (support.level == "fixed" and not dynamic):
        return
    dynamic_formats = [f for f in FORMATS if export_support(info, f).level == "dynamic"]
    fixed_formats = [f for f in FORMATS if export_support(info, f).level != "none"]
    if support.level == "fixed":
        what = " with dynamic height/width"
        options = ([f"--format {' or '.join(dynamic_formats)} for dynamic sizes"] if dynamic_formats else []) + [
            "a fixed size (leave out --dynamic; set it with --height/--width)"
        ]
        advice = f"Use {'; or '.join(options)}."
    else:
        what = ""
        advice = (
            f"Use --format {' or '.join(fixed_formats)}."
            if fixed_formats
            else "No format exports it yet: run it in PyTorch (segzoo.create_model)."
        )
    raise ExportNotSupported(
        f"{info.name} cannot be exported to {FORMAT_NAMES[export_format]}{what}: {support.reason}. {advice}"
    )


@dataclass(frozen=True)
class ExportReport:
    """What ``export_model`` wrote and how closely it matches PyTorch.

    ``max_abs_diff`` and ``max_rel_diff`` (max absolute difference over the largest absolute PyTorch
    logit) are the worst over ``checked_sizes``; both are ``None`` when the export was not checked.
    """

    path: Path
    format: ExportFormat
    input_shape: tuple[int, int, int, int]
    dynamic_axes: dict[int, str]
    checked_sizes: tuple[tuple[int, int], ...]
    max_abs_diff: float | None
    max_rel_diff: float | None
    runtime: str
    extra_files: tuple[Path, ...] = field(default=())

    def summary(self) -> str:
        """A few lines for people: the file, its input, and the check."""
        shape = list(self.input_shape)
        for axis, name in self.dynamic_axes.items():
            shape[axis] = f"{name}>={MIN_DYNAMIC_SIDE}"
        lines = [f"wrote {self.path} ({FORMAT_NAMES[self.format]}, input {tuple(shape)})"]
        lines += [f"wrote {p} (weights of {self.path.name})" for p in self.extra_files]
        if self.max_abs_diff is None:
            lines.append("not checked")
        else:
            sizes = ", ".join(f"{h}x{w}" for h, w in self.checked_sizes)
            lines.append(
                f"checked with {self.runtime} at {sizes}: max abs diff {self.max_abs_diff:.3g}, "
                f"max rel diff {self.max_rel_diff:.3g} vs PyTorch"
            )
        return "\n".join(lines)


def second_check_size(height: int, width: int) -> tuple[int, int]:
    """The other size a dynamic export is checked at: both sides changed, by different amounts."""
    return height + 32, width + 64


def _require_onnx():
    try:
        # the optional export extra, imported when an ONNX export runs; torch.onnx.export needs onnx and onnxscript
        import onnx  # noqa: F401, PLC0415
        import onnxruntime  # noqa: PLC0415
        import onnxscript  # noqa: F401, PLC0415
    except ImportError as err:
        raise ImportError(
            f'ONNX export needs onnx, onnxscript and onnxruntime ({err.name} is missing): pip install "segzoo[export]"'
        ) from err
    return onnxruntime


def _load(model_or_name: EncoderDecoder | str, checkpoint_path: str | Path | None) -> EncoderDecoder:
    if isinstance(model_or_name, str):
        return create_model(model_or_name, pretrained=checkpoint_path is None, checkpoint_path=checkpoint_path)
    if checkpoint_path is not None:
        raise ValueError("checkpoint_path is for a model given by name; load your checkpoint into the model instead")
    if getattr(model_or_name, "info", None) is None:
        raise ValueError("export_model needs a model built by segzoo.create_model (it reads model.info)")
    return model_or_name


def _relative(diff: float, reference: torch.Tensor) -> float:
    return diff / max(reference.abs().max().item(), torch.finfo(reference.dtype).tiny)


def _dynamic_shapes(dynamic: bool) -> dict | None:
    """Height and width dynamic from ``MIN_DYNAMIC_SIDE`` up; ``DYNAMIC`` (unlike a named ``Dim``) lets
    torch.export simplify guards it cannot prove (e.g. ViT's token arithmetic) and still fails if a side
    would be specialized to the example's."""
    if not dynamic:
        return None
    side = torch.export.Dim.DYNAMIC(min=MIN_DYNAMIC_SIDE)
    return {"images": {2: side, 3: side}}


def _name_dynamic_axes(graph) -> None:
    """Call the ONNX graph's symbolic input and output sides ``height`` and ``width``."""
    import onnx_ir as ir  # noqa: PLC0415 (comes with the optional export extra)

    height, width = (str(d) for d in graph.inputs[0].shape[2:])
    names = {height: "height", width: "width"}
    for value in (*graph.inputs, *graph.outputs):
        value.shape = ir.Shape([names.get(str(d), d) if isinstance(d, ir.SymbolicDim) else d for d in value.shape])


def _onnx_metadata(info: ModelInfo) -> dict[str, str]:
    norm = info.normalization
    return {
        "segzoo.model": info.name,
        "segzoo.num_classes": str(info.num_classes),
        "segzoo.channel_order": norm.channel_order,
        "segzoo.mean": repr(tuple(norm.mean)),
        "segzoo.std": repr(tuple(norm.std)),
        "segzoo.input": "normalized images (N, 3, H, W), pixels in [0, 255]",
        "segzoo.output": "logits (N, num_classes, H, W)",
    }


def _export_onnx(model, example, out: Path, dynamic: bool):
    ort = _require_onnx()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            dynamic_shapes=_dynamic_shapes(dynamic),
            input_names=["images"],
            output_names=["logits"],
            verbose=False,
        )
    if dynamic:
        _name_dynamic_axes(program.model.graph)
    program.model.metadata_props.update(_onnx_metadata(model.info))
    weight_bytes = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    external = weight_bytes > _ONNX_SINGLE_FILE_LIMIT
    program.save(out, external_data=external)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    extra = (out.with_name(out.name + ".data"),) if external else ()

    def run(images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"images": images.numpy()})[0])

    return run, f"onnxruntime {ort.__version__} (CPUExecutionProvider)", extra


def _export_torchscript(model, example, out: Path, dynamic: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shapes read as Python numbers
        traced = torch.jit.trace(model, (example,))
        torch.jit.save(traced, str(out))
        loaded = torch.jit.load(str(out))
    return loaded, f"torch.jit {torch.__version__} (reloaded)", ()


def _export_program(model, example, out: Path, dynamic: bool):
    program = torch.export.export(model, (example,), dynamic_shapes=_dynamic_shapes(dynamic))
    torch.export.save(program, out)
    return torch.export.load(out).module(), f"torch.export {torch.__version__} (reloaded)", ()


_EXPORTERS = {"onnx": _export_onnx, "torchscript": _export_torchscript, "exported-program": _export_program}


def export_model(
    model_or_name: EncoderDecoder | str,
    format: ExportFormat,
    out: str | Path,
    *,
    dynamic: bool = False,
    input_size: tuple[int, int] | None = None,
    checkpoint_path: str | Path | None = None,
    check: bool = True,
) -> ExportReport:
    """Export a model in ``format`` to ``out`` and, with ``check``, compare the reloaded file with PyTorch.

    ``model_or_name``: a model from ``segzoo.create_model`` (its weights are exported as they are), or
    a registered name, built with ``checkpoint_path`` when given and with the published weights
    otherwise. The example input is ``(1, 3, *input_size)``, by default the entry's crop size (the
    window a sliding-window entry sees). ``dynamic`` lets height and width vary (``MIN_DYNAMIC_SIDE``
    or more) where the family's export support allows it; the check then runs at a second size too. Raises
    ``ExportNotSupported`` before exporting when the table rules the export out, and
    ``ExportCheckFailed`` (the file stays, for inspection) when the outputs differ by more than
    ``RELATIVE_TOLERANCE`` of the largest logit.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if isinstance(model_or_name, str):
        check_supported(model_info(model_or_name), format, dynamic)  # before any download
    model = _load(model_or_name, checkpoint_path).eval()
    info = model.info
    check_supported(info, format, dynamic)
    height, width = input_size or info.crop_size
    if dynamic and min(height, width) < MIN_DYNAMIC_SIDE:
        raise ValueError(
            f"a dynamic export needs an example input of at least {MIN_DYNAMIC_SIDE}x"
            f"{MIN_DYNAMIC_SIDE}, got {height}x{width}"
        )
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"export runs on the CPU; move the model there first (it is on {device})")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sizes = [(height, width)] + ([second_check_size(height, width)] if dynamic else [])
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(1, 3, h, w, generator=generator) for h, w in sizes]
    with torch.no_grad():
        references = [model(x) for x in inputs]  # also rejects sizes the model cannot take, with its message
    log.info("exporting %s to %s (%s)", info.name, out, format)
    # Traced with autograd on, as training would: under no_grad some modules take eager-only shortcuts
    # (EurNet caches its resized position embedding by the parameter's data pointer).
    run, runtime, extra = _EXPORTERS[format](model, inputs[0], out, dynamic)
    abs_diffs, rel_diffs = [], []
    # TorchScript's profiling executor would first spend minutes optimizing a graph this size.
    with torch.no_grad(), torch.jit.optimized_execution(False):
        for x, reference in zip(inputs, references) if check else ():
            diff = (run(x) - reference).abs().max().item()
            abs_diffs.append(diff)
            rel_diffs.append(_relative(diff, reference))
    report = ExportReport(
        path=out,
        format=format,
        input_shape=(1, 3, height, width),
        dynamic_axes={2: "height", 3: "width"} if dynamic else {},
        checked_sizes=tuple(sizes) if check else (),
        max_abs_diff=max(abs_diffs) if check else None,
        max_rel_diff=max(rel_diffs) if check else None,
        runtime=runtime,
        extra_files=extra,
    )
    if check and report.max_rel_diff > RELATIVE_TOLERANCE:
        raise ExportCheckFailed(
            f"{info.name} exported to {FORMAT_NAMES[format]} differs from PyTorch by up to {report.max_abs_diff:.3g} "
            f"({report.max_rel_diff:.3g} of the largest logit; tolerance {RELATIVE_TOLERANCE}) at "
            f"{', '.join(f'{h}x{w}' for h, w in sizes)}; the file {out} is kept for inspection. Please report it."
        )
    return report
