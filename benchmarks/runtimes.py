"""segzoo's eager and fast paths against the runtimes a deploying user would pick, on segzoo's own ONNX export.

One entry per architecture, random weights (speed does not depend on them), one ``(1, 3, S, S)`` input. Each
column is a way to run the same model: segzoo eager, segzoo's fast path (``optimize_for_inference``), ONNX
Runtime on the ONNX file that ``segzoo.export.export_model`` writes from the eager model (CPU provider, graph
optimizations on), and OpenVINO on that file where its package is installed. All run in one process, one
thread each (``torch.set_num_threads(1)``, ONNX Runtime's ``intra_op_num_threads=1``, OpenVINO's
``INFERENCE_NUM_THREADS=1``), interleaved round by round, timed by the process's CPU time; the table gives
eager's median seconds and, per column, the median of the per-round speed-ups over eager and the largest
difference from eager's logits relative to their largest magnitude.

A column is one entry of :data:`COLUMNS`: a name and a function from the eager model and its ONNX file to a
runner (images in, logits out), or to ``None`` where that runtime is not installed; a runtime that cannot load
an entry's export gets "fails to load" in its cell, with its message printed above the row.

``--optimized-graphs DIR`` saves ONNX Runtime's optimized graph of each entry (``DIR/<entry>.onnx``: the fused
nodes it runs); ``--ort-profile`` runs each session once more with ONNX Runtime's profiler and prints where its
time goes by op type.

    python benchmarks/runtimes.py [--entries NAME ...] [--size 512] [--runs 5] [--optimized-graphs DIR] [--ort-profile]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from measure import interleaved_seconds, pair_ratios

import segzoo
from segzoo.export import export_model

ENTRIES = (
    "moganet_s_fpn_ade20k",
    "moganet_s_upernet_ade20k",
    "eurnet_t_upernet_ade20k",
    "regproxy_vit_s16_ade20k",
    "regproxy_r26_vit_s32_ade20k",
    "emanet_r50_cityscapes",
    "glore_r50_fcn_cityscapes",
)
"""One entry per architecture (RegionProxy: the plain ViT and the hybrid)."""

Runner = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Subject:
    """What a column runs: the eager model and its ONNX export, and where the optional ONNX Runtime outputs go."""

    model: torch.nn.Module
    onnx_file: Path
    optimized_graph: Path | None = None


def eager(subject: Subject) -> Runner:
    return subject.model


def fast(subject: Subject) -> Runner:
    return segzoo.optimize_for_inference(subject.model)


def ort_session(subject: Subject, profile: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: not a warning per unused initializer of the export
    if subject.optimized_graph is not None and not profile:
        options.optimized_model_filepath = str(subject.optimized_graph)
    options.enable_profiling = profile
    return ort.InferenceSession(str(subject.onnx_file), options, providers=["CPUExecutionProvider"])


def onnx_runtime(subject: Subject) -> Runner:
    session = ort_session(subject)

    def run(images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"images": images.numpy()})[0])

    return run


def openvino(subject: Subject) -> Runner | None:
    try:
        import openvino as ov
    except ImportError:
        return None
    compiled = ov.Core().compile_model(
        str(subject.onnx_file), "CPU", {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"}
    )
    request = compiled.create_infer_request()

    def run(images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.array(request.infer({0: images.numpy()})[0]))

    return run


COLUMNS: dict[str, Callable[[Subject], Runner | None]] = {
    "eager": eager,
    "fast": fast,
    "onnxruntime": onnx_runtime,
    "openvino": openvino,
}
"""The columns, eager first (the others are compared with it); one line adds a column."""


@dataclass(frozen=True)
class Row:
    """One entry's measurement; a column missing from ``speedups`` has its reason in ``missing``."""

    entry: str
    size: int
    eager_seconds: float
    speedups: dict[str, float]
    differences: dict[str, float]
    missing: dict[str, str]

    def markdown(self) -> str:
        cells = [
            f"{self.speedups[c]:.2f}x ({self.differences[c]:.0e})" if c in self.speedups else self.missing[c]
            for c in COLUMNS
            if c != "eager"
        ]
        return f"| {self.entry} | {self.size}x{self.size} | {self.eager_seconds:.3f} | {' | '.join(cells)} |"


def table_header() -> str:
    others = [c for c in COLUMNS if c != "eager"]
    return "\n".join(
        (
            f"| entry | input | eager (s) | {' | '.join(f'{c} (speed-up; diff)' for c in others)} |",
            f"|---|---|---:|{'---:|' * len(others)}",
        )
    )


def ort_profile(subject: Subject, images: torch.Tensor, top: int = 8) -> str:
    """One profiled ONNX Runtime run of ``subject``: its node time summed by op type, largest first."""
    session = ort_session(subject, profile=True)
    session.run(None, {"images": images.numpy()})
    trace = Path(session.end_profiling())
    by_op: collections.Counter[str] = collections.Counter()
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"]
    trace.unlink()
    total = sum(by_op.values()) or 1
    return ", ".join(f"{op} {us / 1e6:.3f} s ({us / total:.0%})" for op, us in by_op.most_common(top))


def measure(entry: str, size: int, runs: int, warmup: int, workdir: Path, graphs: Path | None, profile: bool) -> Row:
    torch.manual_seed(0)
    model = segzoo.create_model(entry).eval()
    onnx_file = workdir / f"{entry}.onnx"
    export_model(model, "onnx", onnx_file, input_size=(size, size), check=False)
    subject = Subject(model, onnx_file, graphs / f"{entry}.onnx" if graphs else None)
    images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    present: dict[str, Runner] = {}
    missing: dict[str, str] = {}
    for name, build in COLUMNS.items():
        try:
            runner = build(subject)
        except Exception as err:  # a runtime that cannot load this export costs its cell, not the run
            print(f"{entry}: {name} could not load the export: {str(err).strip().splitlines()[-1]}", flush=True)
            missing[name] = "fails to load"
            continue
        if runner is None:
            missing[name] = "not installed"
        else:
            present[name] = runner
    outputs: dict[str, torch.Tensor] = {}

    def run(name: str) -> None:
        outputs[name] = present[name](images)

    with torch.inference_mode():
        seconds = interleaved_seconds(
            {name: partial(run, name) for name in present}, runs, warmup=warmup, clock=time.process_time
        )
    reference = outputs["eager"]
    scale = reference.abs().max().item()
    speedups = {name: statistics.median(pair_ratios(seconds["eager"], seconds[name])) for name in present}
    differences = {name: (outputs[name] - reference).abs().max().item() / scale for name in present}
    if profile:
        print(f"{entry}: onnxruntime by op type: {ort_profile(subject, images)}", flush=True)
    return Row(entry, size, statistics.median(seconds["eager"]), speedups, differences, missing)


def versions() -> str:
    import onnxruntime

    found = [f"torch {torch.__version__}", f"onnxruntime {onnxruntime.__version__}"]
    try:
        import openvino

        found.append(f"openvino {openvino.__version__}")
    except ImportError:
        found.append("openvino not installed")
    return ", ".join(found)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", nargs="+", default=list(ENTRIES), metavar="NAME")
    parser.add_argument("--size", type=int, default=512, help="input side in pixels (default 512)")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--optimized-graphs", type=Path, metavar="DIR", help="save ONNX Runtime's optimized graphs")
    parser.add_argument("--ort-profile", action="store_true", help="print ONNX Runtime's time by op type")
    return parser


def main(argv: list[str] | None = None) -> list[Row]:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)
    if args.optimized_graphs:
        args.optimized_graphs.mkdir(parents=True, exist_ok=True)
    print(
        f"{versions()}; {platform.processor() or platform.machine()}, 1 thread per runtime, process CPU time, "
        f"median of {args.runs} interleaved rounds after {args.warmup} untimed; load average {os.getloadavg()}"
    )
    print(table_header(), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for entry in args.entries:
            rows.append(
                measure(
                    entry, args.size, args.runs, args.warmup, Path(workdir), args.optimized_graphs, args.ort_profile
                )
            )
            print(rows[-1].markdown(), flush=True)
    print(f"load average after: {os.getloadavg()}")
    return rows


if __name__ == "__main__":
    main()
