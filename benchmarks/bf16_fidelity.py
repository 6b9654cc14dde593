"""How far the bf16 fast path (``optimize_for_inference(model, dtype=torch.bfloat16)``) is from eager fp32, per
registry entry, and how much faster it is, written as ``bf16`` CPU rows of ``benchmarks/zoo.csv``.

Weights: the golden cases' synthetic weights (``../shared/golden``: ``synth.synth_state_dict`` of the entry's
upstream manifest, saved in the published container and loaded by ``create_model(checkpoint_path=...)``) where the
entry has a case, else random initialization (seed 0); without ``../shared/golden`` every entry is random.

Inputs, one row each: ``sample`` the bundled sample photo (``segzoo/assets/sample.png``) resized to ``--size``
square as uint8 and normalized as the entry's pipeline normalizes; ``ade20k-like`` and ``cityscapes-like`` the
first validation image of the synthetic ADE20K and Cityscapes folders the tests build (coloured blocks, 64x64 and
64x96), resized to ``--size`` rows with their aspect ratio and normalized the same way; ``golden`` the golden
case's input (``synth.synth_input``, 256x256) where there is one, else ``synth_input`` at ``--size``. Each input
is one forward of the model (no pre- or post-processing), at ``--size`` (default 256; the full sweep of 31 entries
at 512x512 on one thread takes hours).

Columns: ``bf16_max_err`` the largest absolute logit difference, ``bf16_rel_err`` ``||bf16 - fp32|| / ||fp32||``
over all logits, ``bf16_agreement`` the share of pixels whose argmax is the same, ``bf16_agreement_clear`` the same
share among pixels where fp32's top-2 margin exceeds :data:`CLEAR_MARGIN` times the standard deviation of its
logits (random weights make many near-ties, which any rounding flips; the share of such clear pixels is in the
note). ``speedup_vs_eager`` is eager fp32 / bf16 process CPU time on one thread, median of ``--runs`` interleaved
rounds in this process; ``latency_ms`` the bf16 median.

    PYTHONPATH=. python benchmarks/bf16_fidelity.py [--entries 'moganet_*'] [--size 256] [--runs 3]
        [--inputs sample ade20k-like cityscapes-like golden] [--out benchmarks/zoo.csv]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from measure import interleaved_seconds, pair_ratios
from PIL import Image
from zoo import device_name, machine_header, machine_lines, merge_rows, read_rows, write_outputs

import segzoo
from segzoo.cli import sample_image_path
from segzoo.inference.pipeline import normalize

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "golden"
INPUTS = ("sample", "ade20k-like", "cityscapes-like", "golden")
CLEAR_MARGIN = 0.1
"""A pixel's fp32 margin is clear when its top-2 logit gap exceeds this many standard deviations of the logits."""


def _golden_spec(name: str) -> dict | None:
    found = sorted(GOLDEN.glob(f"*/{name}.json")) if GOLDEN.is_dir() else []
    return json.loads(found[0].read_text()) if found else None


def build_model(name: str) -> tuple[torch.nn.Module, str, dict | None]:
    """The eager fp32 model with golden synthetic weights where there are, else random ones; what it holds."""
    spec = _golden_spec(name)
    if spec is None:
        torch.manual_seed(0)
        return segzoo.create_model(name), "random weights", None
    sys.path.insert(0, str(GOLDEN))
    from check import post_load, wrap
    from synth import synth_state_dict

    state_dict = post_load(spec, synth_state_dict(spec["manifest"], spec.get("weights_seed", 0)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.pth"
        torch.save(wrap(spec.get("container", ""), state_dict), path)
        return segzoo.create_model(name, checkpoint_path=path), "golden synthetic weights", spec


def _test_scenes(size: int) -> dict[str, np.ndarray]:
    """The first validation image of the synthetic ADE20K and Cityscapes folders the tests build (coloured
    blocks: ``tests/test_training_loop.py``'s ``make_ade20k``, ``tests/test_evaluation.py``'s
    ``make_official_cityscapes``), resized to ``size`` rows with their aspect ratio."""
    sys.path.insert(0, str(REPO))
    from tests.test_evaluation import make_official_cityscapes
    from tests.test_training_loop import make_ade20k

    scenes = {}
    with tempfile.TemporaryDirectory() as tmp:
        ade = make_ade20k(Path(tmp) / "ade", train_images=0, val_images=1)
        city = make_official_cityscapes(Path(tmp) / "cityscapes")
        for label, path in (
            ("ade20k-like", sorted((ade / "images" / "validation").glob("*.jpg"))[0]),
            ("cityscapes-like", sorted((city / "leftImg8bit" / "val").rglob("*.png"))[0]),
        ):
            with Image.open(path) as image:
                width = round(image.width * size / image.height)
                scenes[label] = np.asarray(image.convert("RGB").resize((width, size), Image.BILINEAR))
    return scenes


def inputs_for(model: torch.nn.Module, spec: dict | None, size: int, kinds: list[str]) -> dict[str, torch.Tensor]:
    """The model inputs of ``kinds`` (of :data:`INPUTS`), normalized as the entry's pipeline normalizes."""
    info = model.info
    photos = {}
    if "sample" in kinds:
        photo = Image.open(sample_image_path()).convert("RGB").resize((size, size), Image.BILINEAR)
        photos["sample"] = np.asarray(photo)
    if {"ade20k-like", "cityscapes-like"} & set(kinds):
        photos.update((k, v) for k, v in _test_scenes(size).items() if k in kinds)
    inputs = {k: normalize(photo, info.test_pipeline, info.normalization) for k, photo in photos.items()}
    if "golden" in kinds and GOLDEN.is_dir():
        sys.path.insert(0, str(GOLDEN))
        from synth import synth_input

        cases = (spec or {}).get("cases") or [{"input_shape": [1, 3, size, size]}]
        inputs["golden"] = synth_input(cases[0]["input_shape"], cases[0].get("input_seed", 1))
    return inputs


def fidelity(reference: torch.Tensor, output: torch.Tensor) -> dict[str, float]:
    reference, output = reference.double(), output.double()
    top2 = reference.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > CLEAR_MARGIN * reference.std()
    agree = reference.argmax(1) == output.argmax(1)
    return {
        "max_err": float((output - reference).abs().max()),
        "rel_err": float((output - reference).norm() / reference.norm()),
        "agreement": float(agree.double().mean()),
        "agreement_clear": float(agree[clear].double().mean()) if clear.any() else float("nan"),
        "clear_share": float(clear.double().mean()),
    }


def measure(name: str, size: int, runs: int, kinds: list[str]) -> list[dict]:
    eager, weights, spec = build_model(name)
    bf16 = segzoo.optimize_for_inference(eager, dtype=torch.bfloat16)
    rows = []
    for label, x in inputs_for(eager, spec, size, kinds).items():
        with torch.inference_mode():
            seconds = interleaved_seconds(
                {"eager": partial(eager, x), "bf16": partial(bf16, x)}, runs, clock=time.process_time
            )
            scores = fidelity(eager(x), bf16(x))
        speedup = statistics.median(pair_ratios(seconds["eager"], seconds["bf16"]))
        rows.append(
            {
                "name": name,
                "family": eager.info.family,
                "resolution": f"{x.shape[2]}x{x.shape[3]} {label}",
                "mode": "bf16",
                "device": "cpu",
                "device_name": device_name(torch.device("cpu")),
                "threads": torch.get_num_threads(),
                "latency_ms": f"{1000 * statistics.median(seconds['bf16']):.1f}",
                "speedup_vs_eager": f"{speedup:.2f}",
                "bf16_max_err": f"{scores['max_err']:.3g}",
                "bf16_rel_err": f"{scores['rel_err']:.2g}",
                "bf16_agreement": f"{100 * scores['agreement']:.2f}%",
                "bf16_agreement_clear": f"{100 * scores['agreement_clear']:.2f}%",
                "note": f"vs eager fp32, {weights}, {label} input; clear margin on "
                f"{100 * scores['clear_share']:.0f}% of pixels; CPU time",
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", default="*", help="fnmatch pattern of registry names (default: all)")
    parser.add_argument("--size", type=int, default=256, help="square side of the sample input (default 256)")
    parser.add_argument("--runs", type=int, default=3, help="timed interleaved rounds after one warm-up")
    parser.add_argument("--inputs", nargs="+", choices=INPUTS, default=list(INPUTS), help="which inputs (default: all)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("zoo.csv"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    header = machine_header(machine_lines(args.out.with_suffix(".md")))
    rows = read_rows(args.out)
    for name in (n for n in segzoo.list_models() if fnmatch.fnmatchcase(n, args.entries)):
        measured = measure(name, args.size, args.runs, args.inputs)
        rows, _ = merge_rows(rows, measured, [])
        for row in measured:
            print(json.dumps(row), flush=True)
        write_outputs(args.out, rows, header)


if __name__ == "__main__":
    main()
