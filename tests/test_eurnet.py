"""EurNet: parameter counts, the upstream checkpoint layout, the dense graph against the scattered one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import cache

import pytest
import torch

import segzoo
from segzoo.backbones.eurnet import MediumRangeGraph
from segzoo.families import build_architecture
from segzoo.weights import load_state_dict_strict
from tests.conftest import REPO, SHARED, save_mmseg_checkpoint, upstream_manifests
from tests.test_benchmarks import load_benchmark

NAMES = [f"eurnet_{size}_upernet_ade20k" for size in "tsb"]
GOLDEN = SHARED / "golden" / "eurnet"


@cache
def baseline():
    """The benchmark's port of the upstream structure (edge lists, index_add_, full kNN matrix)."""
    return load_benchmark("eurnet_inference")


@pytest.fixture(scope="module")
def tiny(module_tmp):
    """EurNet-T UperNet loaded strictly from a synthetic checkpoint in the published mmseg layout."""
    g = torch.Generator().manual_seed(0)
    state_dict = {}
    for key, (shape, dtype) in sorted(upstream_manifests()[NAMES[0]].items()):
        if dtype == "int64":
            state_dict[key] = torch.zeros(shape, dtype=torch.int64)
        elif key.endswith("running_var") or key.startswith("backbone.") and ".norm" in key and key.endswith(".weight"):
            state_dict[key] = 0.5 + torch.rand(shape, generator=g)  # sane activation scales through the blocks
        else:
            state_dict[key] = 0.05 * torch.randn(shape, generator=g)
    path = save_mmseg_checkpoint(module_tmp("eurnet") / "eurnet_t.pth", state_dict)
    model = segzoo.create_model(NAMES[0], checkpoint_path=str(path)).eval()
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state_dict.items())
    return model


@pytest.mark.parametrize(
    "size",
    [
        (100, 130),
        (32, 352),
        pytest.param((224, 224), marks=pytest.mark.slow),
        pytest.param((72, 400), marks=pytest.mark.slow),
    ],
)
def test_dense_backbone_equals_scattered_upstream_structure(tiny, size):
    """Sizes that are not multiples of 32, with ties in the kNN (224, 32x352: the virtual node is picked)
    and a stage whose grid is wider than one window (72x400: patches outside every window)."""
    images = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = tiny.backbone(images)
        theirs = baseline().baseline_backbone(tiny.backbone, images)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        assert ((a - b).norm() / b.norm()).item() < 1e-4
    with torch.no_grad():
        assert tiny(images).shape == (1, 150, *size)


@pytest.mark.parametrize("h,w", [(8, 8), (7, 7), (4, 7), (3, 4), (1, 11), (30, 200), (8, 150), (150, 9)])
def test_knn_equals_full_distance_matrix(h, w):
    """Classes with enough candidates, classes completed from ties, windows along the diagonal."""
    graph = MediumRangeGraph(32)
    x = torch.randn(1, h, w, 32, generator=torch.Generator().manual_seed(h * 1000 + w))
    ours = graph(x)
    theirs = baseline().baseline_knn(x.reshape(1, h * w, 32), h, w, 12, 144, 2)
    assert torch.equal(ours.sort(-1).values, theirs.sort(-1).values)


def test_too_small_input_names_the_smallest_size_that_works(tiny):
    with pytest.raises(ValueError, match=r"96x96 input.*97x97"):
        tiny.backbone(torch.zeros(1, 3, 96, 96))
    with pytest.raises(ValueError, match=r"at least 32x321 or 33x320"):
        tiny.backbone(torch.zeros(1, 3, 32, 320))
    with pytest.raises(ValueError, match="patches per stage"):
        MediumRangeGraph(32)(torch.zeros(1, 2, 5, 32))


def test_position_embedding_cached_per_size_and_refreshed_on_load(tiny):
    backbone = tiny.backbone
    with torch.no_grad():
        first = backbone.position_embedding(20, 30, backbone.absolute_pos_embed)
        assert backbone.position_embedding(20, 30, backbone.absolute_pos_embed) is first
        assert backbone.position_embedding(21, 30, backbone.absolute_pos_embed).shape == (1, 21, 30, 96)
        saved = backbone.absolute_pos_embed.clone()
        backbone.absolute_pos_embed.mul_(2)
        try:
            torch.testing.assert_close(backbone.position_embedding(20, 30, backbone.absolute_pos_embed), 2 * first)
        finally:
            backbone.absolute_pos_embed.copy_(saved)


@pytest.mark.skipif(not GOLDEN.is_dir(), reason="needs ../shared/golden")
def test_knn_indices_equal_upstream(tiny):
    sys.path.insert(0, str(GOLDEN.parent))
    from synth import synth_input, synth_state_dict

    spec = json.loads((GOLDEN / f"{NAMES[0]}.json").read_text())
    weights = synth_state_dict(spec["manifest"], spec.get("weights_seed", 0))
    model = build_architecture("eurnet_upernet", initialize=False, arch="t").eval()  # on the meta device
    load_state_dict_strict(model, weights, "synthetic upstream weights")
    picked = []
    hooks = [
        s.graph_construction_model.medium.register_forward_hook(lambda m, i, o: picked.append(o))
        for s in model.backbone.stages[1:]
    ]
    with torch.no_grad():
        model.backbone(synth_input([1, 3, 256, 256], 1))
    for hook in hooks:
        hook.remove()
    upstream = torch.load(GOLDEN / f"{NAMES[0]}.256x256.knn.pt", weights_only=True)
    for ours, theirs in zip(picked, upstream, strict=True):
        assert torch.equal(ours.sort(-1).values, theirs.long().sort(-1).values)


def _golden(entry: str) -> None:
    result = subprocess.run(
        [sys.executable, str(SHARED / "golden" / "check.py"), "--family", "eurnet", "--entry", entry],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1/1 cases match upstream" in result.stdout


@pytest.mark.skipif(not GOLDEN.is_dir(), reason="needs ../shared/golden")
def test_golden_case_eurnet_t():
    _golden(NAMES[0])


@pytest.mark.slow
@pytest.mark.skipif(not GOLDEN.is_dir(), reason="needs ../shared/golden")
@pytest.mark.parametrize("name", NAMES[1:])
def test_golden_cases_eurnet_s_b(name):
    _golden(name)
