"""The ViT rewrites of the fast path (segzoo.optimize.vit) compute the eager function, and are applied."""

from functools import partial

import pytest
import torch
from torch import nn

import segzoo
from segzoo.heads import ProxyHead
from segzoo.optimize import optimize_for_inference
from segzoo.optimize.vit import FastProxyHead, FastViTBlock, onednn_linear_available
from tests.test_optimize import RTOL, randomize_folded_statistics, relative_error

timm_vit = pytest.importorskip("timm.models.vision_transformer")


def randomize_layer_norms(model: nn.Module, seed: int = 0) -> None:
    """LayerNorm affine parameters far from the identity (otherwise folding them is trivially exact)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.3)


def timm_block(dim: int = 64, heads: int = 2) -> nn.Module:
    block = timm_vit.Block(dim, heads, 4.0, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6)).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in block.parameters():
            param.copy_(torch.randn(param.shape, generator=g) * 0.1)
    randomize_layer_norms(block)
    return block


@pytest.mark.parametrize(
    "onednn",
    [
        False,
        pytest.param(
            True,
            marks=pytest.mark.skipif(
                not onednn_linear_available(), reason="oneDNN's fused linear is not available in this torch build"
            ),
        ),
    ],
)
@pytest.mark.parametrize("shape", [(1, 17), (2, 37)])  # batch and odd token counts
def test_folded_block_equals_timm_block(onednn, shape):
    block = timm_block()
    x = torch.randn(*shape, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ref = block(x)
        fast = FastViTBlock(timm_block(), onednn)  # a fresh copy: folding changes the block's layers
        assert relative_error(fast(x), ref) < RTOL


def test_onednn_probe_answers():
    assert onednn_linear_available() in (True, False)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("batch,grid", [(1, (4, 6)), (2, (5, 3))])
def test_batched_proxy_head_equals_proxy_head(batch, grid, channels_last):
    head = ProxyHead(32, 32, 7).eval()
    randomize_folded_statistics(head)
    g = torch.Generator().manual_seed(4)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    inputs = [torch.randn(batch, 32, *grid, generator=g).contiguous(memory_format=memory_format) for _ in range(2)]
    with torch.inference_mode():
        ref = head(inputs)
        out = FastProxyHead.from_module(head)(inputs)
    assert out.shape == ref.shape == (batch, 7, grid[0] * 4, grid[1] * 4)
    assert relative_error(out, ref) < RTOL


@pytest.fixture(scope="module")
def vit_ti():
    model = segzoo.create_model("regproxy_vit_ti16_ade20k")
    randomize_folded_statistics(model)
    randomize_layer_norms(model)
    return model


def test_rewrites_are_applied(vit_ti):
    fast = optimize_for_inference(vit_ti)
    assert all(isinstance(block, FastViTBlock) for block in fast.backbone.blocks)
    assert len(fast.backbone.blocks) == len(vit_ti.backbone.blocks)
    assert type(fast.decode_head) is FastProxyHead
    assert not any(isinstance(block, FastViTBlock) for block in vit_ti.backbone.modules()), "eager changed"


@pytest.mark.parametrize("size", [(2, 64, 96), (1, 70, 45)])  # batch 2; a size the patches do not divide
def test_fast_vit_equals_eager(vit_ti, size):
    batch, *hw = size
    x = torch.randn(batch, 3, *hw, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        ref = vit_ti(x)
        assert relative_error(optimize_for_inference(vit_ti)(x), ref) < RTOL


def test_resized_position_embedding_follows_the_grid(vit_ti):
    fast = optimize_for_inference(vit_ti)
    again = optimize_for_inference(fast)  # optimizing a fast model keeps it as it is
    g = torch.Generator().manual_seed(8)
    with torch.inference_mode():
        for hw in [(64, 96), (96, 64), (64, 96), (512, 512)]:  # the last: the trained grid, no resizing
            x = torch.randn(1, 3, *hw, generator=g)
            ref = vit_ti(x)
            assert relative_error(fast(x), ref) < RTOL
            assert relative_error(again(x), ref) < RTOL


def test_wide_vits_keep_plain_linear(vit_ti, monkeypatch):
    """Above ONEDNN_MAX_WIDTH MKL's GEMM is the faster one (ViT-B and wider): those blocks take F.linear."""
    monkeypatch.setattr("segzoo.optimize.vit.ONEDNN_MAX_WIDTH", vit_ti.backbone.out_channels[0] - 1)
    assert not any(block.onednn for block in optimize_for_inference(vit_ti).backbone.blocks)


def test_plain_linear_fallback_equals_eager(vit_ti):
    fast = optimize_for_inference(vit_ti)
    for block in fast.backbone.blocks:
        block.onednn = False
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        assert relative_error(fast(x), vit_ti(x)) < RTOL


@pytest.mark.slow
def test_compiled_fast_vit_equals_eager(vit_ti):
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        ref = vit_ti(x)
        assert relative_error(optimize_for_inference(vit_ti, compile=True)(x), ref) < RTOL
