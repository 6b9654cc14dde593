"""GloRe: the Global Reasoning unit, the FCN + GloRe entries and their recorded assumptions."""

import pytest
import torch

import segzoo
from segzoo.heads import GloReUnit2d
from tests.conftest import SHARED, synthetic_state_dict, upstream_manifests
from tests.test_emanet import run_golden_check

NAME = "glore_r50_fcn_cityscapes"


def _unit(normalize: bool) -> GloReUnit2d:
    unit = GloReUnit2d(16, 4, normalize=normalize)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in unit.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(0.3 * torch.randn(tensor.shape, generator=g) + (1.0 if tensor.ndim == 1 else 0.0))
    return unit.eval()


def _reference(unit: GloReUnit2d, x: torch.Tensor, normalize: bool) -> torch.Tensor:
    """The unit's function written out with einsum (the test's reference)."""
    state = unit.conv_state(x).flatten(2)
    projection = unit.conv_proj(x).flatten(2)
    nodes = torch.einsum("bsp,bnp->bsn", state, projection)
    if normalize:
        nodes = nodes / state.shape[2]
    adjacency = unit.gcn.conv1.weight[:, :, 0]
    nodes = nodes + torch.einsum("mn,bsn->bsm", adjacency, nodes) + unit.gcn.conv1.bias[None, None, :]
    nodes = torch.einsum("ts,bsn->btn", unit.gcn.conv2.weight[:, :, 0], torch.relu(nodes))
    back = torch.einsum("bsn,bnp->bsp", nodes, projection).view(x.shape[0], -1, *x.shape[2:])
    return x + unit.blocker(unit.conv_extend(back))


@pytest.mark.parametrize("normalize", [False, True])
def test_unit_computes_the_global_reasoning_step(normalize):
    unit = _unit(normalize)
    x = torch.randn(2, 16, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(unit(x), _reference(unit, x, normalize), rtol=1e-4, atol=1e-4)


def test_normalize_divides_the_node_features_by_the_pixel_count():
    plain, normalized = _unit(False), _unit(True)
    normalized.load_state_dict(plain.state_dict())
    with torch.no_grad():
        x = torch.randn(1, 16, 6, 6)
        assert not torch.allclose(plain(x), normalized(x))
        one_pixel = torch.randn(2, 16, 1, 1)  # dividing by one pixel changes nothing
        torch.testing.assert_close(plain(one_pixel), normalized(one_pixel))


def test_fresh_unit_is_the_identity_and_has_upstream_keys():
    unit = GloReUnit2d(64, 16)
    x = torch.randn(1, 64, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(unit.eval()(x), x)
    assert unit.blocker.eps == 1e-4 and unit.num_state == 32 and unit.num_node == 16
    expected = {k: tuple(shape) for k, (shape, _) in upstream_manifests()["glore_unit2d_2048_512"].items()}
    assert {k: tuple(v.shape) for k, v in GloReUnit2d(2048, 512).state_dict().items()} == expected


@pytest.fixture(scope="module")
def checkpoint(module_tmp):
    state_dict = synthetic_state_dict(NAME)
    path = module_tmp("glore") / "resnet50_w-glore.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state_dict.items()}, "epoch": 1}, path)
    return state_dict, path


def test_checkpoint_in_the_assumed_layout_loads_strictly(checkpoint):
    state_dict, path = checkpoint
    model = segzoo.create_model(NAME, checkpoint_path=path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state_dict[key]), key
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 80)).shape == (1, 19, 64, 80)


def test_entries_record_test_server_metrics_and_their_assumptions():
    assert segzoo.list_models("glore_*") == ["glore_r101_fcn_cityscapes", "glore_r50_fcn_cityscapes"]
    for name in segzoo.list_models("glore_*"):
        info = segzoo.model_info(name)
        assert set(info.metrics) == {"IoU class", "iIoU class", "IoU category", "iIoU category"}
        assert info.metrics_split == "test" and info.evaluator == "cityscapes"
        (source,) = info.weights
        assert source.kind == "archive" and source.format == "pytorch" and source.url.endswith("_w-glore.tar")
        assert any("unverified" in note for note in info.notes)
        assert sum(note.startswith("Assumed") for note in info.notes) >= 4
        assert info.license == "MIT"
    assert dict(segzoo.model_info("glore_r101_fcn_cityscapes").metrics) == {
        "IoU class": 80.9,
        "iIoU class": 62.2,
        "IoU category": 91.5,
        "iIoU category": 82.1,
    }


@pytest.mark.skipif(not (SHARED / "golden" / "check.py").is_file(), reason="needs ../shared/golden")
def test_golden_cases_match_upstream():
    result = run_golden_check("--family", "glore")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cases match upstream" in result.stdout
