"""RegionProxy's ViTs on the fast path: left as eager (no rewrite measured faster), and the fast model computes the
eager function."""

import pytest
import torch

import segzoo
from segzoo.heads import ProxyHead
from segzoo.optimize import optimize_for_inference
from tests.test_optimize import RTOL, randomize_folded_statistics, relative_error

timm_vit = pytest.importorskip("timm.models.vision_transformer")


@pytest.fixture(scope="module")
def vit_ti():
    model = segzoo.create_model("regproxy_vit_ti16_ade20k")
    randomize_folded_statistics(model)
    return model


def test_blocks_and_head_stay_eager(vit_ti):
    fast = optimize_for_inference(vit_ti)
    assert all(type(block) is timm_vit.Block for block in fast.backbone.blocks)
    assert type(fast.decode_head) is ProxyHead


@pytest.mark.parametrize("size", [(2, 64, 96), (1, 70, 45)])  # batch 2; a size the patches do not divide
def test_fast_vit_equals_eager(vit_ti, size):
    batch, *hw = size
    x = torch.randn(batch, 3, *hw, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        ref = vit_ti(x)
        assert relative_error(optimize_for_inference(vit_ti)(x), ref) < RTOL


@pytest.mark.slow
def test_compiled_fast_vit_equals_eager(vit_ti):
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        ref = vit_ti(x)
        assert relative_error(optimize_for_inference(vit_ti, compile=True)(x), ref) < RTOL
