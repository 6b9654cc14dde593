"""The dilated ResNets' fast path: Winograd F(2x2, 3x3) convolutions, where they apply, with the same function."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import segzoo
from segzoo.backbones.resnet_dilated import Bottleneck
from segzoo.heads.glore import GloReUnit2d
from segzoo.optimize import optimize_for_inference, winograd
from segzoo.optimize.glore import FastGloReUnit2d
from segzoo.optimize.resnet import FastBottleneck, WinogradConv2d, winograd_applies
from segzoo.optimize.winograd import transform_weight, winograd_conv3x3
from tests.test_optimize import RTOL, randomize_folded_statistics, relative_error


@pytest.mark.parametrize(
    ("batch", "channels", "out_channels", "height", "width", "dilation"),
    [(1, 8, 5, 8, 8, 1), (2, 8, 5, 7, 9, 1), (1, 4, 3, 9, 13, 2), (2, 4, 3, 10, 11, 3), (1, 6, 7, 5, 6, 8)],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_winograd_equals_direct_convolution(batch, channels, out_channels, height, width, dilation, channels_last):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, height, width, generator=g, dtype=torch.float64)
    weight = torch.randn(out_channels, channels, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(out_channels, generator=g, dtype=torch.float64)
    ref = F.conv2d(x, weight, bias, padding=dilation, dilation=dilation)
    x32 = x.float().contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    out = winograd_conv3x3(x32, transform_weight(weight.float()), bias.float(), dilation)
    assert out.shape == ref.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(out.double(), ref) < 1e-6
    no_bias = winograd_conv3x3(x32, transform_weight(weight.float()), None, dilation, relu=True)
    assert relative_error(no_bias.double(), ref.sub(bias.view(-1, 1, 1)).relu()) < 1e-6


@pytest.mark.parametrize("budget", [1, 3000])  # one tile row per pass, several
def test_winograd_in_bands_of_tile_rows_equals_direct_convolution(monkeypatch, budget):
    monkeypatch.setattr(winograd, "TILE_BUDGET", budget)
    g = torch.Generator().manual_seed(0)
    x, weight = torch.randn(2, 8, 9, 7, generator=g), torch.randn(5, 8, 3, 3, generator=g)
    out = winograd_conv3x3(x, transform_weight(weight), None, dilation=2)
    assert relative_error(out, F.conv2d(x, weight, padding=2, dilation=2)) < 1e-6


def test_winograd_applies_to_wide_stride1_dense_3x3_only():
    assert winograd_applies(nn.Conv2d(128, 128, 3, padding=2, dilation=2))
    assert not winograd_applies(nn.Conv2d(64, 64, 3, padding=1))  # too narrow to gain
    assert not winograd_applies(nn.Conv2d(128, 128, 3, stride=2, padding=1))
    assert not winograd_applies(nn.Conv2d(128, 128, 3, padding=1, groups=2))
    assert not winograd_applies(nn.Conv2d(128, 128, 3, padding=0))
    assert not winograd_applies(nn.Conv2d(128, 128, 1))


@pytest.fixture(scope="module")
def emanet_coco():
    """EMANet-R50 COCO-Stuff: output stride 8, layer4 dilated by 4, 8 and 16."""
    model = segzoo.create_model("emanet_r50_coco")
    randomize_folded_statistics(model)
    return model


def test_winograd_replaces_the_wide_3x3_convolutions(emanet_coco):
    fast = optimize_for_inference(emanet_coco)
    replaced = {name for name, m in fast.named_modules() if isinstance(m, WinogradConv2d)}
    backbone = {f"backbone.layer{i}.{b}.conv2" for i, n in ((2, 4), (3, 6), (4, 3)) for b in range(n)} - {
        "backbone.layer2.0.conv2"  # stride 2
    }
    assert replaced == backbone | {"decode_head.reduced_conv", "decode_head.predictor_conv"}
    assert [m.dilation for m in fast.backbone.layer4.modules() if isinstance(m, WinogradConv2d)] == [4, 8, 16]
    assert fast.decode_head.reduced_conv.relu


def test_every_bottleneck_adds_its_shortcut_in_place(emanet_coco):
    fast = optimize_for_inference(emanet_coco)
    blocks = [m for m in fast.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16 and all(type(b) is FastBottleneck for b in blocks)
    assert not any(isinstance(m, FastBottleneck) for m in emanet_coco.modules()), "eager changed"


@pytest.mark.parametrize("downsample", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_bottleneck_equals_bottleneck(downsample, channels_last):
    shortcut = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16)) if downsample else None
    block = Bottleneck(8 if downsample else 16, 4, dilation=2, downsample=shortcut).eval()
    randomize_folded_statistics(block)
    x = torch.randn(2, block.conv1.in_channels, 9, 11, generator=torch.Generator().manual_seed(2))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    with torch.inference_mode():
        ref = block(x)
        fast = optimize_for_inference(block).to(memory_format=memory_format)
        assert type(fast) is FastBottleneck
        assert relative_error(fast(x.contiguous(memory_format=memory_format)), ref) < RTOL


@pytest.mark.parametrize(("batch", "size"), [(2, (64, 96)), (1, (65, 97))])
def test_emanet_fast_path_equals_eager(emanet_coco, batch, size):
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = emanet_coco(x)
        out = optimize_for_inference(emanet_coco)(x)
    assert relative_error(out, ref) < RTOL


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("shape", [(2, 64, 7, 9), (1, 64, 8, 8)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_folded_glore_unit_equals_eager(normalize, shape, channels_last):
    unit = GloReUnit2d(64, 16, normalize).eval()
    randomize_folded_statistics(unit)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = unit(x)
        fast = optimize_for_inference(unit)
        assert isinstance(fast, FastGloReUnit2d)
        out = fast(x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format))
    assert relative_error(out, ref) < RTOL


def test_glore_entry_gets_the_folded_unit():
    fast = optimize_for_inference(segzoo.create_model("glore_r50_fcn_cityscapes"))
    assert isinstance(fast.decode_head.glore, FastGloReUnit2d)
    assert isinstance(fast.decode_head.convs[0].conv, WinogradConv2d)


@pytest.mark.slow
def test_compiled_fast_path_equals_eager():
    model = segzoo.create_model("glore_r50_fcn_cityscapes")
    randomize_folded_statistics(model)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = model(x)
        out = optimize_for_inference(model, compile=True)(x)
    assert relative_error(out, ref) < RTOL
