"""create_backbone: per-family channels and strides, out_indices subsets, the encoder's weights as the model's."""

from __future__ import annotations

import pytest
import torch

import segzoo
from tests.conftest import save_mmseg_checkpoint, synthetic_state_dict

# entry: (channels, reductions) of the default features
EXPECTED = {
    "moganet_xt_fpn_ade20k": ([32, 64, 96, 192], [4, 8, 16, 32]),
    "eurnet_t_upernet_ade20k": ([96, 192, 384, 768], [4, 8, 16, 32]),
    "emanet_r50_cityscapes": ([256, 512, 1024, 2048], [4, 8, 16, 16]),
    "glore_r50_fcn_cityscapes": ([256, 512, 1024, 2048], [4, 8, 8, 8]),
    "regproxy_vit_ti16_ade20k": ([192, 192], [16, 16]),
    "regproxy_r26_vit_s32_ade20k": ([384, 384], [32, 32]),
}


@pytest.mark.parametrize("name", EXPECTED)
def test_features_have_the_documented_channels_and_strides(name):
    backbone = segzoo.create_backbone(name, pretrained=False)
    channels, reductions = EXPECTED[name]
    assert backbone.feature_info.channels() == channels
    assert backbone.feature_info.reduction() == reductions
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 128, 128))
    assert [f.shape[1] for f in features] == channels
    assert [128 // f.shape[-1] for f in features] == reductions


def test_out_indices_subset():
    backbone = segzoo.create_backbone("moganet_xt_fpn_ade20k", pretrained=False, out_indices=(1, 3))
    assert backbone.feature_info.channels() == [64, 192]
    assert backbone.feature_info.module_name() == ["norm2", "norm4"]
    with torch.no_grad():
        assert [f.shape[1] for f in backbone(torch.randn(1, 3, 64, 64))] == [64, 192]
    vit = segzoo.create_backbone("regproxy_vit_ti16_ade20k", pretrained=False, out_indices=(-1, 2, 11))
    assert vit.feature_info.module_name() == ["patch_embed", "blocks.2", "blocks.11"]
    with torch.no_grad():
        assert len(vit(torch.randn(1, 3, 64, 64))) == 3
    with pytest.raises(ValueError, match="out_indices"):
        segzoo.create_backbone("emanet_r50_coco", pretrained=False, out_indices=(4,))


def test_segmentation_weights_in_the_encoder_are_the_models(tmp_path):
    name = "moganet_xt_fpn_ade20k"
    path = save_mmseg_checkpoint(tmp_path / "fpn.pth", synthetic_state_dict(name))
    model = segzoo.create_model(name, checkpoint_path=path)
    backbone = segzoo.create_backbone(name, pretrained=False, checkpoint_path=path)
    expected = model.backbone.state_dict()
    assert backbone.backbone.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in backbone.backbone.state_dict().items())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(backbone(x), model.backbone(x)))


def test_pretrained_must_be_true_false_or_imagenet():
    with pytest.raises(ValueError, match="imagenet"):
        segzoo.create_backbone("moganet_xt_fpn_ade20k", pretrained="in1k")
