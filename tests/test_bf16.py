"""The bf16 inference mode: its dtype plumbing, its float32 islands, its warning, and a fidelity floor per
architecture (speed is measured by benchmarks/bf16_speed.py, never here)."""

import io
import warnings

import numpy as np
import pytest
import torch

import segzoo
from segzoo import optimize
from segzoo.cli import main
from segzoo.heads.ema import EMAUnit
from segzoo.inference.predict import model_for_precision
from segzoo.optimize import compute_dtype, optimize_for_inference
from segzoo.optimize.resnet import WinogradConv2d
from tests.test_optimize import PER_ARCHITECTURE, random_input, randomize_folded_statistics

BF16 = torch.bfloat16
CLEAR_MARGIN = 0.1  # standard deviations of the fp32 logits, as benchmarks/bf16_fidelity.py
AGREEMENT_FLOOR = 0.999  # where fp32's top-2 margin is clear
REL_ERROR_BOUND = 0.05  # ||bf16 - fp32|| / ||fp32|| over all logits (the hybrid ViT's is the largest)


@pytest.fixture(autouse=True)
def cpu_with_bf16(monkeypatch):
    """A CPU with bf16 instructions, unless a test says otherwise; the once-only warning forgotten."""
    monkeypatch.setattr(optimize, "cpu_computes_bf16", lambda: True)
    optimize._warn_slow_bf16.cache_clear()
    yield
    optimize._warn_slow_bf16.cache_clear()


@pytest.fixture(scope="module")
def emanet():
    model = segzoo.create_model("emanet_r50_cityscapes")
    randomize_folded_statistics(model)
    return model


@pytest.mark.parametrize("name", PER_ARCHITECTURE)
def test_bf16_logits_agree_with_fp32_where_the_margin_is_clear(name):
    model = segzoo.create_model(name)
    randomize_folded_statistics(model)
    x = random_input(name)
    with torch.inference_mode():
        reference = model(x).double()
        out = optimize_for_inference(model, dtype=BF16)(x)
    assert out.dtype == torch.float32 and out.shape == reference.shape
    relative = ((out.double() - reference).norm() / reference.norm()).item()
    assert relative < REL_ERROR_BOUND
    top2 = reference.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > CLEAR_MARGIN * reference.std()
    assert clear.double().mean() > 0.3, "too few clear pixels to judge"
    agreement = (out.argmax(1) == reference.argmax(1))[clear].double().mean().item()
    assert agreement >= AGREEMENT_FLOOR


def test_fp32_stays_the_default_and_exact(emanet):
    x = random_input("emanet_r50_cityscapes")
    with torch.inference_mode():
        default, explicit = optimize_for_inference(emanet), optimize_for_inference(emanet, dtype=torch.float32)
        assert torch.equal(default(x), explicit(x))
    assert compute_dtype(default) == torch.float32 and compute_dtype(emanet) == torch.float32
    assert all(p.dtype == torch.float32 for p in default.parameters())
    assert model_for_precision(emanet, "fp32") is emanet


def test_bf16_model_keeps_its_float32_islands_and_skips_winograd(emanet):
    fast = optimize_for_inference(emanet, dtype=BF16)
    assert compute_dtype(fast) == BF16
    island = next(m for m in fast.modules() if isinstance(m, EMAUnit))
    assert all(t.dtype == torch.float32 for t in (*island.parameters(), *island.buffers()))
    in_island = {id(p) for p in island.parameters()}
    assert {p.dtype for p in fast.parameters() if id(p) not in in_island} == {BF16}
    assert not any(isinstance(m, WinogradConv2d) for m in fast.modules())
    assert any(isinstance(m, WinogradConv2d) for m in optimize_for_inference(emanet).modules())


def test_bf16_model_saves_and_loads(emanet):
    fast = optimize_for_inference(emanet, dtype=BF16)
    buffer = io.BytesIO()
    torch.save(fast, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    x = random_input("emanet_r50_cityscapes")
    with torch.inference_mode():
        assert torch.equal(loaded(x), fast(x))


def test_create_model_and_optimize_take_the_dtype_and_refuse_others():
    fast = segzoo.create_model("moganet_xt_fpn_ade20k", fuse=True, dtype=BF16)
    assert compute_dtype(fast) == BF16 and next(fast.parameters()).dtype == BF16
    with pytest.raises(ValueError, match="needs fuse=True"):
        segzoo.create_model("moganet_xt_fpn_ade20k", dtype=BF16)
    with pytest.raises(ValueError, match="torch.float32 or torch.bfloat16"):
        optimize_for_inference(fast, dtype=torch.float16)


def test_predict_in_bf16(emanet):
    image = np.random.default_rng(0).integers(0, 255, (40, 72, 3), dtype=np.uint8)
    fp32 = segzoo.predict(emanet, image)
    bf16 = segzoo.predict(emanet, image, precision="bf16")
    assert bf16.labels.shape == fp32.labels.shape == (40, 72)
    assert compute_dtype(emanet) == torch.float32, "predict optimizes a copy"
    fast_bf16 = optimize_for_inference(emanet, dtype=BF16)
    assert np.array_equal(segzoo.predict(fast_bf16, image, precision="bf16").labels, bf16.labels)
    with pytest.raises(ValueError, match="optimized for inference in torch.float32"):
        segzoo.predict(optimize_for_inference(emanet), image, precision="bf16")
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        segzoo.predict(emanet, image, precision="fp16")


def test_a_cpu_without_bf16_instructions_is_warned_once(monkeypatch, emanet):
    monkeypatch.setattr(optimize, "cpu_computes_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="no bf16 instructions") as caught:
        optimize_for_inference(emanet, dtype=BF16)
        optimize_for_inference(emanet, dtype=BF16)
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1


def test_no_warning_with_bf16_instructions_or_in_fp32(monkeypatch, emanet):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        optimize_for_inference(emanet, dtype=BF16)
        monkeypatch.setattr(optimize, "cpu_computes_bf16", lambda: False)
        optimize_for_inference(emanet)


def test_cpu_flags_are_read_from_cpuinfo(monkeypatch, tmp_path):
    monkeypatch.undo()
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(optimize, "Path", lambda _: cpuinfo)
    for flags, expected in (("fpu avx512f avx512_bf16", True), ("fpu avx2 avx512f", False)):
        optimize.cpu_computes_bf16.cache_clear()
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert optimize.cpu_computes_bf16() is expected
    optimize.cpu_computes_bf16.cache_clear()
    cpuinfo.unlink()
    assert optimize.cpu_computes_bf16() is None
    optimize.cpu_computes_bf16.cache_clear()


def test_cli_refuses_an_unknown_precision(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["moganet_xt_fpn_ade20k", "emanet_r50_cityscapes", "regproxy_vit_ti16_ade20k"])
def test_bf16_on_cuda_keeps_the_floor(name):
    model = segzoo.create_model(name).cuda()
    x = random_input(name).cuda()
    with torch.inference_mode():
        reference = model(x).double()
        out = optimize_for_inference(model, dtype=BF16)(x)
    assert out.dtype == torch.float32 and out.device.type == "cuda"
    assert ((out.double() - reference).norm() / reference.norm()).item() < REL_ERROR_BOUND


def test_float32_islands_keep_their_weights_unrounded(emanet):
    fast = optimize_for_inference(emanet, dtype=BF16)
    island = next(m for m in fast.modules() if isinstance(m, EMAUnit))
    original = next(m for m in emanet.modules() if isinstance(m, EMAUnit))
    assert torch.equal(island.mu, original.mu) and torch.equal(island.conv1.weight, original.conv1.weight)
