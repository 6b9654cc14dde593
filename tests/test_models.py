"""Architectures: exact parameter counts, the model contract, equivalence with upstream outputs."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import segzoo
from segzoo.families import build_architecture, convert_state_dict
from tests.conftest import ONE_PER_ARCHITECTURE, REPO, SHARED, synthetic_state_dict, upstream_manifests

NAMES = segzoo.list_models()


def _meta_model(name: str):
    info = segzoo.model_info(name)
    with torch.device("meta"):
        return build_architecture(info.architecture, **info.arch_args, num_classes=info.num_classes)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_equals_upstream(name):
    model = _meta_model(name)
    count = sum(p.numel() for p in model.parameters())
    assert count == segzoo.model_info(name).num_params
    golden = SHARED / "golden" / segzoo.model_info(name).family / f"{name}.json"
    if golden.is_file():
        assert count == json.loads(golden.read_text())["params_total"]


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_layout_equals_published_checkpoint(name):
    """The published checkpoint's keys, after the family's converter, are exactly the model's."""
    model_layout = {k: (list(v.shape), v.dtype) for k, v in _meta_model(name).state_dict().items()}
    manifest = upstream_manifests()[name]
    published = {
        k: torch.empty(shape, dtype=getattr(torch, dtype), device="meta") for k, (shape, dtype) in manifest.items()
    }
    converted = convert_state_dict(segzoo.model_info(name).architecture, published)
    assert {k: (list(v.shape), v.dtype) for k, v in converted.items()} == model_layout


class _HostTensorLog(TorchDispatchMode):
    """Records the ops that take a host tensor (other than a 0-dim scalar)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        flat, _ = tree_flatten((args, kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.dim() for t in flat):
            self.ops.add(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ONE_PER_ARCHITECTURE)
def test_forward_runs_on_the_meta_device_without_host_tensors(name):
    """What CUDA graphs and torch.export need: no step reads tensor values back on the host (meta tensors have
    none), and once a size's caches are built, no step takes a host tensor. EurNet at 128x160 and 1216x320 also
    completes its kNN graph from ties."""
    model = _meta_model(name).eval()
    info = segzoo.model_info(name)
    sizes = [(128, 160), (1216, 320)] if info.family == "eurnet" else [(64, 96)]
    with torch.no_grad():
        for size in sizes:
            images = torch.empty(2, 3, *size, device="meta")
            assert model(images).shape == (2, info.num_classes, *size)
            with _HostTensorLog() as log:
                model(images)
            assert not log.ops


@pytest.fixture(scope="module")
def xt_models():
    """The smallest real configurations, with synthetic weights, in eval mode."""
    models = {}
    for head in ("fpn", "upernet"):
        name = f"moganet_xt_{head}_ade20k"
        model = segzoo.create_model(name)
        model.load_state_dict(synthetic_state_dict(name))
        models[head] = model.eval()
    return models


@pytest.mark.parametrize("head", ["fpn", "upernet"])
@pytest.mark.parametrize("size", [(32, 32), (33, 47), (97, 130), (64, 64)])
def test_eval_returns_logits_at_input_resolution(xt_models, head, size):
    with torch.no_grad():
        out = xt_models[head](torch.randn(2, 3, *size))
    assert out.shape == (2, 150, *size)
    assert torch.isfinite(out).all()


def test_training_mode_returns_auxiliary_logits(xt_models):
    x = torch.randn(2, 3, 64, 96)
    upernet, fpn = xt_models["upernet"], xt_models["fpn"]
    try:
        upernet.train()
        fpn.train()
        out = upernet(x)
        assert set(out) == {"out", "aux"}
        assert out["out"].shape == out["aux"].shape == (2, 150, 64, 96)
        out["out"].mean().backward()
        assert set(fpn(x)) == {"out"}
    finally:
        upernet.eval()
        fpn.eval()


def test_rejects_bad_inputs(xt_models):
    with pytest.raises(ValueError, match="at least 32"):
        xt_models["fpn"](torch.randn(1, 3, 16, 64))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        xt_models["fpn"](torch.randn(3, 64, 64))


def test_batch_items_are_independent_in_eval(xt_models):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        batch = xt_models["upernet"](x)
        single = xt_models["upernet"](x[1:])
    torch.testing.assert_close(batch[1:], single, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not (SHARED / "golden" / "check.py").is_file(), reason="needs ../shared/golden")
def test_golden_cases_match_upstream():
    result = subprocess.run(
        [sys.executable, str(SHARED / "golden" / "check.py"), "--family", "moganet"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},  # this checkout's segzoo
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "10/10 cases match upstream" in result.stdout
