"""EMANet: the EM attention unit, detectron2 checkpoints loaded strictly, the entries' facts, upstream equivalence."""

import os
import re
import subprocess
import sys
from functools import cache

import pytest
import torch

import segzoo
from segzoo.families import convert_state_dict
from segzoo.heads import EMAUnit
from segzoo.weights import CheckpointMismatchError
from tests.conftest import REPO, SHARED, synthetic_state_dict, upstream_manifests

NAME = "emanet_r50_cityscapes"
ENTRIES = [f"emanet_r{d}_{s}" for s in ("coco", "cityscapes") for d in (50, 101, 152)]


@cache
def run_golden_check(*args: str) -> subprocess.CompletedProcess:
    """``check.py`` on this checkout's segzoo (not whichever one the interpreter would import)."""
    return subprocess.run(
        [sys.executable, str(SHARED / "golden" / "check.py"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


@pytest.fixture(scope="module")
def checkpoint_files(module_tmp):
    """One synthetic R50 Cityscapes checkpoint, saved as detectron2 does and as a bare state dict."""
    root = module_tmp("emanet")
    state_dict = synthetic_state_dict(NAME)
    container = root / "detectron2.pth"
    torch.save({"model": state_dict, "optimizer": {}, "scheduler": {}, "iteration": 29_999}, container)
    bare = root / "bare.pth"
    torch.save(state_dict, bare)
    return state_dict, container, bare


@pytest.fixture(scope="module")
def model(checkpoint_files):
    return segzoo.create_model(NAME, checkpoint_path=checkpoint_files[1])


def test_detectron2_container_loads_strictly_with_every_buffer(model, checkpoint_files):
    state_dict = checkpoint_files[0]
    assert sum(k.endswith("num_batches_tracked") for k in state_dict) == 58
    loaded = model.state_dict()
    converted = convert_state_dict("emanet", state_dict)
    assert loaded.keys() == converted.keys()
    for key, value in converted.items():
        assert torch.equal(loaded[key], value), key
    assert torch.equal(loaded["decode_head.conv_seg.weight"], state_dict["sem_seg_head.predictor.2.weight"])
    assert torch.equal(loaded["decode_head.emau.mu"], state_dict["sem_seg_head.emau.mu"])


def test_bare_state_dict_gives_the_same_model(model, checkpoint_files):
    bare = segzoo.create_model(NAME, checkpoint_path=checkpoint_files[2])
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(bare(x), model(x), rtol=0, atol=0)


def test_converter_is_identity_on_segzoo_layout(model):
    native = model.state_dict()
    assert convert_state_dict("emanet", native) is native


def test_logits_at_input_size_and_training_output(model, checkpoint_files):
    x = torch.randn(2, 3, 65, 97)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 19, 65, 97) and torch.isfinite(logits).all()
    trained = segzoo.create_model(NAME, checkpoint_path=checkpoint_files[1]).train()
    out = trained(x)
    assert set(out) == {"out"} and out["out"].shape == (2, 19, 65, 97)
    out["out"].mean().backward()
    assert trained.decode_head.emau.conv1.weight.grad is not None


def test_missing_or_misshapen_keys_are_named(tmp_path, checkpoint_files):
    state_dict = dict(checkpoint_files[0])
    del state_dict["sem_seg_head.emau.mu"]
    state_dict["sem_seg_head.predictor.2.weight"] = torch.zeros(54, 256, 1, 1)
    path = tmp_path / "broken.pth"
    torch.save({"model": state_dict}, path)
    with pytest.raises(CheckpointMismatchError, match=r"decode_head\.emau\.mu") as err:
        segzoo.create_model(NAME, checkpoint_path=path)
    assert "decode_head.conv_seg.weight: checkpoint (54, 256, 1, 1), model (19, 256, 1, 1)" in str(err.value)


def test_new_num_classes_keeps_everything_but_the_classifier(checkpoint_files):
    with pytest.warns(UserWarning, match="decode_head.conv_seg"):
        model = segzoo.create_model(NAME, checkpoint_path=checkpoint_files[1], num_classes=3)
    assert model.num_classes == 3 and model.classifier_names() == ["decode_head.conv_seg"]


# The EM attention unit on its own.


def _unit(seed: int = 0) -> EMAUnit:
    unit = EMAUnit(32, 8)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in unit.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(0.2 * torch.randn(tensor.shape, generator=g) + (1.0 if tensor.ndim == 1 else 0.0))
    mu = torch.randn(1, 32, 8, generator=g)
    unit.mu.copy_(mu / mu.norm(dim=1, keepdim=True))
    return unit


def _refined_bases(unit: EMAUnit, x: torch.Tensor) -> torch.Tensor:
    """The bases after the unit's EM iterations, computed here step by step (the test's reference)."""
    features = unit.conv1(x).flatten(2)
    mu = unit.mu.expand(x.shape[0], -1, -1)
    for _ in range(unit.iterations):
        z = torch.softmax(torch.einsum("bcn,bck->bnk", features, mu), dim=2)
        mu = torch.einsum("bcn,bnk->bck", features, z / (1e-6 + z.sum(dim=1, keepdim=True)))
        mu = mu / (1e-6 + mu.norm(dim=1, keepdim=True))
    return mu


def test_unit_signature_follows_upstream_order():
    unit = EMAUnit(16, 4, 2, 0.5, "BN", 3e-4)
    assert unit.mu.shape == (1, 16, 4) and unit.iterations == 2 and unit.momentum == 0.5
    assert unit.conv2.norm.momentum == 3e-4
    assert sorted(unit.state_dict()) == sorted(upstream_manifests()["emanet_emau_512_64"])
    with pytest.raises(ValueError, match="at least one EM iteration"):
        EMAUnit(16, 4, 0)


def test_unit_eval_keeps_its_bases_and_is_deterministic():
    unit = _unit().eval()
    before = unit.mu.clone()
    x = torch.randn(2, 32, 5, 7)
    with torch.no_grad():
        first, second = unit(x), unit(x)
    assert torch.equal(unit.mu, before) and torch.equal(first, second)


def test_unit_training_moves_bases_with_momentum_without_renormalizing():
    unit = _unit().train()
    before = unit.mu.clone()
    x = torch.randn(3, 32, 5, 7)
    with torch.no_grad():
        expected = 0.9 * before + 0.1 * _refined_bases(unit, x).mean(dim=0, keepdim=True)
    out = unit(x)
    out.sum().backward()  # the in-place update of the buffer must not break autograd
    torch.testing.assert_close(unit.mu, expected, rtol=1e-5, atol=1e-6)
    assert (unit.mu.norm(dim=1) < 1 - 1e-4).any()  # averaged bases are shorter: left as they are


def test_loaded_bases_are_used_as_stored():
    unit = _unit().eval()
    x = torch.randn(1, 32, 6, 6)
    with torch.no_grad():
        reference = unit(x)
        state = unit.state_dict()
        state["mu"] = 0.5 * state["mu"]
        unit.load_state_dict(state)
        assert torch.equal(unit.mu, state["mu"])
        scaled = unit(x)
    assert torch.equal(unit.mu, state["mu"])
    assert not torch.allclose(scaled, reference)


# The entries.


def test_entries_record_the_table_and_the_detectron2_pipeline():
    assert segzoo.list_models("emanet_*") == sorted(ENTRIES)
    for name in ENTRIES:
        info = segzoo.model_info(name)
        coco = name.endswith("coco")
        assert (info.dataset, info.num_classes) == (("COCO-Stuff54", 54) if coco else ("Cityscapes", 19))
        assert set(info.metrics) == {"PA", "mean PA", "mean IoU", "FW IoU"}
        assert set(info.reported_costs) == {"train time (s/iter)", "inference time (s/im)", "train mem (GB)"}
        assert info.evaluator == "detectron2_2019" and info.metrics_split == "val"
        assert info.normalization.channel_order == "BGR" and info.normalization.mean == (103.53, 116.28, 123.675)
        pipeline = info.test_pipeline
        assert pipeline.resize == "shortest_edge" and pipeline.rescale_align_corners is False
        assert pipeline.scale == ((800, 1333) if coco else (1024, 2048)) and info.align_corners is True
        assert info.params_m is None and info.flops_g is None and info.flops_input_shape is None
        (source,) = info.weights
        assert source.kind == "manual" and source.format == "detectron2" and source.access_code
        assert source.filename == f"{name}.pth" and source.url.startswith("https://pan.baidu.com/s/")
        assert info.arch_args["output_stride"] == (8 if coco else 16)
        assert (info.train_iters, info.train_batch_size) == (30_000, 16)
    assert any("inconsistent" in note for note in segzoo.model_info("emanet_r152_coco").notes)


@pytest.mark.skipif(not (SHARED / "seeds").is_dir(), reason="needs ../shared/seeds")
def test_entries_match_the_seed_tables():
    seed = next(p for p in (SHARED / "seeds").iterdir() if "EMANet" in p.read_text()).read_text()
    for dataset in ("coco", "cityscapes"):
        section = seed.split(f"### {'COCO' if dataset == 'coco' else 'Cityscapes'}")[1].split("</table>")[0]
        for row in re.findall(r"<tr>(.*?)</tr>", section, re.S):
            cells = re.findall(r'<td align="center">(.*?)</td>', row, re.S)
            depth = re.search(r">R(\d+)<", cells[0]).group(1)
            info = segzoo.model_info(f"emanet_r{depth}_{dataset}")
            numbers = [float(c) for c in cells[1:8]]
            assert numbers == [*info.reported_costs.values(), *info.metrics.values()], info.name
            link, code = re.fullmatch(r'<a href="(\S+)">model</a>&nbsp;\|&nbsp;(\w+)', cells[8]).groups()
            assert (link, code) == (info.weights[0].url, info.weights[0].access_code)
            assert info.upstream.path == re.search(r'href="(\S+?)"', cells[0]).group(1)


@pytest.mark.skipif(not (SHARED / "golden" / "check.py").is_file(), reason="needs ../shared/golden")
@pytest.mark.parametrize("entry", ["emanet_emau_512_64", "emanet_r50_cityscapes", "emanet_r50_coco"])
def test_golden_cases_match_upstream(entry):
    result = run_golden_check("--family", "emanet", "--entry", entry)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1/1 cases match upstream" in result.stdout


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "golden" / "check.py").is_file(), reason="needs ../shared/golden")
def test_all_golden_cases_match_upstream():
    result = run_golden_check("--family", "emanet")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7/7 cases match upstream" in result.stdout
