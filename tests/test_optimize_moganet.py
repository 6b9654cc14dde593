"""MogaNet's fast-path rewrites compute the eager block's function: pre-padded dilated conv, fused fc2 and
decompose, the hidden map in channel slices, the FFN's depth-wise conv and GELU as one oneDNN op."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import segzoo
from segzoo.backbones.moganet import MogaBlock, MogaNet
from segzoo.heads import FPNHead, FPNNeck
from segzoo.optimize import moganet as optimize_moganet
from segzoo.optimize import optimize_for_inference
from segzoo.optimize.fpn import FastFPNHead, FastFPNNeck
from segzoo.optimize.moganet import FastMogaBlock, _move_excess_padding, onednn_conv_gelu_available
from tests.test_optimize import RTOL, randomize_folded_statistics, relative_error

FUSE_GELU = [
    False,
    pytest.param(
        True,
        marks=pytest.mark.skipif(not onednn_conv_gelu_available(), reason="oneDNN's fused conv is not in this build"),
    ),
]


def random_block(channels: int, ffn_ratio: int, seed: int) -> tuple[MogaBlock, nn.BatchNorm2d]:
    torch.manual_seed(seed)
    block, closing = MogaBlock(channels, ffn_ratio).eval(), nn.BatchNorm2d(channels).eval()
    container = nn.ModuleList([block, closing])
    randomize_folded_statistics(container, seed)
    with torch.no_grad():  # random conv weights of the usual scale, so the gates are neither open nor shut
        for conv in (m for m in block.modules() if isinstance(m, nn.Conv2d)):
            conv.bias.normal_(0, 0.1)
    return block, closing


@pytest.mark.parametrize("size", [(7, 9), (13, 10), (16, 16)])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_excess_padding_moved_before_the_conv(size, memory_format):
    conv = nn.Conv2d(8, 8, 7, padding=9, dilation=3, groups=8)
    x = torch.randn(2, 8, *size).contiguous(memory_format=memory_format)
    with torch.no_grad():
        reference = conv(x)
        padding = _move_excess_padding(conv)
        assert conv.padding == (6, 6) and padding == (3, 3, 3, 3)
        torch.testing.assert_close(conv(F.pad(x, padding)), reference, rtol=1e-5, atol=1e-5)


def test_padding_within_the_kernel_is_kept():
    conv = nn.Conv2d(8, 8, 5, padding=4, dilation=2, groups=8)
    assert _move_excess_padding(conv) == (0, 0, 0, 0) and conv.padding == (4, 4)


@pytest.mark.parametrize("fuse_gelu", FUSE_GELU)
@pytest.mark.parametrize("closing", [False, True])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_folded_block_equals_block(closing, memory_format, fuse_gelu):
    block, norm = random_block(16, 4, seed=3)
    x = torch.randn(2, 16, 11, 14, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        reference = block(x)
        reference = norm(reference) if closing else reference
        folded = FastMogaBlock(block, norm if closing else None).to(memory_format=memory_format)
        folded.fuse_gelu = fuse_gelu
        out = folded(x.contiguous(memory_format=memory_format))
    assert relative_error(out, reference) < RTOL


@pytest.mark.parametrize("fuse_gelu", FUSE_GELU)
@pytest.mark.parametrize("max_bytes", [64 * 11 * 14 * 4 // 2, 1000, 1])  # 2 slices, 40 uneven ones, 1 per channel
def test_hidden_map_in_channel_slices(monkeypatch, max_bytes, fuse_gelu):
    block, norm = random_block(8, 8, seed=5)
    x = torch.randn(1, 8, 11, 14, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        reference = norm(block(x))
        folded = FastMogaBlock(block, norm)
        folded.fuse_gelu = fuse_gelu
        whole = folded(x)
        monkeypatch.setattr(optimize_moganet, "MAX_HIDDEN_BYTES", max_bytes)
        sliced = folded(x)
    assert relative_error(sliced, reference) < RTOL
    assert relative_error(sliced, whole) < RTOL


@pytest.fixture(scope="module")
def xt_fpn():
    model = segzoo.create_model("moganet_xt_fpn_ade20k").eval()
    randomize_folded_statistics(model)
    return model


def test_rewrites_applied_to_the_entry(xt_fpn):
    fast = optimize_for_inference(xt_fpn)
    backbone = fast.backbone
    assert isinstance(backbone, MogaNet) and isinstance(fast.decode_head, FastFPNHead)
    assert isinstance(fast.neck, FastFPNNeck)
    blocks = [m for m in backbone.modules() if isinstance(m, MogaBlock | FastMogaBlock)]
    assert blocks and all(isinstance(b, FastMogaBlock) for b in blocks)
    for block in blocks:
        assert block.high_conv.padding == (6, 6) and block.high_padding == (3, 3, 3, 3)
        assert block.fc2_decompose.out_channels == block.channels + 1
        assert block.fuse_gelu == onednn_conv_gelu_available()


@pytest.mark.slow
def test_compiled_fast_path(xt_fpn):
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        reference = xt_fpn(x)
        out = optimize_for_inference(xt_fpn, compile=True)(x)
    assert relative_error(out, reference) < RTOL


@pytest.mark.parametrize("size", [(64, 96), (72, 104)])  # levels' sizes 2x apart or not (the resize kept)
def test_fpn_head_shares_upsampling(size):
    head = FPNHead([8, 8, 8, 8], channels=8, num_classes=3).eval()
    randomize_folded_statistics(head)
    g = torch.Generator().manual_seed(7)
    h, w = size[0] // 4, size[1] // 4
    inputs = [torch.randn(2, 8, -(-h // s), -(-w // s), generator=g) for s in (1, 2, 4, 8)]
    with torch.no_grad():
        reference = head(inputs)
        fast = optimize_for_inference(head)
        assert isinstance(fast, FastFPNHead)
        out = fast(inputs)
    assert relative_error(out, reference) < RTOL


@pytest.mark.parametrize("size", [(64, 96), (68, 100), (64, 104)])  # all levels 2x apart, none, some
def test_fpn_neck_splits_its_output_convs(size):
    torch.manual_seed(8)
    neck = FPNNeck([4, 6, 8, 10], out_channels=8).eval()
    g = torch.Generator().manual_seed(9)
    h, w = size[0] // 4, size[1] // 4
    inputs = [torch.randn(2, c, -(-h // s), -(-w // s), generator=g) for c, s in zip((4, 6, 8, 10), (1, 2, 4, 8))]
    with torch.no_grad():
        for conv in (m for m in neck.modules() if isinstance(m, nn.Conv2d)):
            conv.bias.normal_(0, 1.0, generator=g)
        reference = neck(inputs)
        fast = optimize_for_inference(neck)
        assert isinstance(fast, FastFPNNeck)
        outputs = fast(inputs)
    assert len(outputs) == len(reference)
    for out, ref in zip(outputs, reference):
        assert out.shape == ref.shape and relative_error(out, ref) < RTOL
