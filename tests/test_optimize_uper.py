"""UperNet's level fusion in the fast path equals resize, concatenate and 3x3 conv."""

import pytest
import torch
import torch.nn.functional as F

import segzoo
from segzoo.heads import UPerHead
from segzoo.optimize import fold
from segzoo.optimize.uper import FastUPerHead, UpsampledLevelsConv, interpolation_matrix
from tests.test_optimize import randomize_folded_statistics, relative_error


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size_in,size_out", [(4, 16), (43, 171), (7, 7), (9, 5)])
def test_interpolation_matrix_is_the_resize(size_in, size_out, align_corners):
    x = torch.randn(2, 3, 5, size_in, dtype=torch.float64)
    resized = F.interpolate(x, size=(5, size_out), mode="bilinear", align_corners=align_corners)
    matrix = interpolation_matrix(size_in, size_out, align_corners, x)
    torch.testing.assert_close(x @ matrix.t(), resized)


def small_head(align_corners: bool) -> UPerHead:
    head = UPerHead([8, 16, 24, 32], channels=16, num_classes=5, align_corners=align_corners).eval()
    randomize_folded_statistics(head)
    return head


@pytest.mark.parametrize("align_corners", [False, True])
def test_fused_levels_equal_the_concatenated_convolution(align_corners):
    head = small_head(align_corners)
    g = torch.Generator().manual_seed(0)
    # odd sizes: the coarse levels are not exact halvings, so the resize scales are not integers
    levels = [torch.randn(2, 16, h, w, generator=g) for h, w in [(33, 47), (17, 24), (9, 12), (5, 6)]]
    with torch.no_grad():
        expected = head.fuse_levels(list(levels))
        fold(head)
        fused = UpsampledLevelsConv(head.fpn_bottleneck, 16, align_corners)
        assert relative_error(fused(levels), expected) < 1e-6


def test_every_upernet_head_is_rewritten():
    model = segzoo.optimize_for_inference(torch.nn.Sequential(small_head(False), small_head(True)))
    assert all(type(head) is FastUPerHead for head in model.module)
    assert all(isinstance(head.fpn_bottleneck, UpsampledLevelsConv) for head in model.module)


def test_fast_upernet_entry_uses_the_rewrite():
    fast = segzoo.optimize_for_inference(segzoo.create_model("moganet_xt_upernet_ade20k"))
    assert type(fast.decode_head) is FastUPerHead
