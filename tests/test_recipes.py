"""Training recipes: one per entry, agreeing with the registry; optimizer groups, schedules and loss conventions
checked against values worked out by hand from the upstream rules (mmcv 1.x, detectron2 2019-11, mmseg 0.x)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch import nn

import segzoo
from segzoo.families import build_architecture, convert_state_dict
from segzoo.registry import UnknownModelError, model_info
from segzoo.training import build_lr_scheduler, build_optimizer, compute_losses, get_recipe
from segzoo.training.recipes import upstream_parameter_name
from segzoo.training.schedules import learning_rate


def _meta_model(name: str) -> nn.Module:
    info = model_info(name)
    return build_architecture(info.architecture, initialize=False, num_classes=info.num_classes, **info.arch_args)


def _lr_and_decay(optimizer: torch.optim.Optimizer) -> dict[str, tuple[float, float]]:
    return {
        name: (group["lr"], group["weight_decay"]) for group in optimizer.param_groups for name in group["param_names"]
    }


@pytest.mark.parametrize("name", segzoo.list_models())
def test_every_entry_has_a_recipe_that_agrees_with_the_registry(name):
    info, recipe = model_info(name), get_recipe(name)
    assert (recipe.iters, recipe.batch_size, recipe.crop_size) == (
        info.train_iters,
        info.train_batch_size,
        info.crop_size,
    )
    assert recipe.iters > 0 and recipe.gpus * recipe.images_per_gpu == recipe.batch_size
    assert recipe.upstream == info.upstream and recipe.expected_wall_time


def test_paper_settings():
    assert (get_recipe("moganet_s_fpn_ade20k").gpus, get_recipe("moganet_s_fpn_ade20k").images_per_gpu) == (8, 4)
    assert get_recipe("moganet_s_upernet_ade20k").images_per_gpu == 2
    assert get_recipe("emanet_r50_coco").images_per_gpu == 2
    assert [t.weight for t in get_recipe("eurnet_t_upernet_ade20k").losses.terms] == [1.0, 0.4]


def test_unknown_entry_raises():
    with pytest.raises(UnknownModelError):
        get_recipe("no_such_model")


# ---- optimizer groups: one recipe per family, values from the upstream rules by hand ----


def test_moganet_upernet_groups():
    # AdamW lr 1e-4, wd 0.01; custom_keys layer_scale / scale / norm -> decay 0; other rules at mmcv defaults (1).
    lrs = _lr_and_decay(
        build_optimizer(_meta_model("moganet_s_upernet_ade20k"), get_recipe("moganet_s_upernet_ade20k"))
    )
    assert lrs["backbone.blocks1.0.norm1.weight"] == (1e-4, 0.0)  # 'norm'
    assert lrs["backbone.blocks1.0.layer_scale_1"] == (1e-4, 0.0)  # 'layer_scale'
    assert lrs["backbone.blocks1.0.attn.sigma.scale"] == (1e-4, 0.0)  # 'scale' (ElementScale)
    assert lrs["backbone.patch_embed1.projection.1.weight"] == (1e-4, 0.01)  # stem BN: 'norm' misses it
    assert lrs["decode_head.bottleneck.bn.weight"] == (1e-4, 0.01)  # head '.bn': missed too
    assert lrs["decode_head.conv_seg.bias"] == (1e-4, 0.01)  # bias_decay_mult 1
    assert lrs["auxiliary_head.convs.0.conv.weight"] == (1e-4, 0.01)


def test_moganet_fpn_single_group():
    optimizer = build_optimizer(_meta_model("moganet_xt_fpn_ade20k"), get_recipe("moganet_xt_fpn_ade20k"))
    # no paramwise_cfg: lr 1e-4 * gpu_multiples 2, weight decay 1e-4 for everything
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [(2e-4, 1e-4)]


def test_eurnet_groups():
    lrs = _lr_and_decay(build_optimizer(_meta_model("eurnet_t_upernet_ade20k"), get_recipe("eurnet_t_upernet_ade20k")))
    assert lrs["backbone.absolute_pos_embed"] == (6e-5, 0.0)
    assert lrs["backbone.stages.0.blocks.0.norm1.weight"] == (6e-5, 0.0)
    assert lrs["backbone.stages.0.graph_construction_model.node_layers.0.virtual_node_embed"] == (6e-5, 0.01)
    assert lrs["decode_head.fpn_bottleneck.bn.bias"] == (6e-5, 0.01)
    assert lrs["decode_head.conv_seg.weight"] == (6e-5, 0.01)


def test_regproxy_groups_match_upstream_names():
    model, recipe = _meta_model("regproxy_vit_b16_ade20k"), get_recipe("regproxy_vit_b16_ade20k")
    lrs = _lr_and_decay(build_optimizer(model, recipe))
    for no_decay in (
        "backbone.pos_embed",
        "backbone.cls_token",
        "backbone.dist_token",
        "backbone.blocks.0.norm1.weight",
        "backbone.norm.bias",
    ):
        assert lrs[no_decay] == (6e-5, 0.0), no_decay
    assert lrs["backbone.blocks.0.attn.qkv.weight"] == (6e-5, 0.01)
    assert lrs["decode_head.affinity_head.0.depthwise_conv.bn.weight"] == (6e-5, 0.01)
    assert upstream_parameter_name(recipe, "backbone.blocks.3.norm2.bias") == "backbone.layers.3.ln2.bias"
    assert (
        upstream_parameter_name(recipe, "backbone.patch_embed.proj.weight") == "backbone.patch_embed.projection.weight"
    )


@pytest.mark.parametrize("name", ["regproxy_vit_b16_ade20k", "regproxy_r26_vit_s32_ade20k"])
def test_regproxy_upstream_names_invert_the_converter(name):
    model, recipe = _meta_model(name), get_recipe(name)
    params = dict(model.named_parameters())
    upstream = {upstream_parameter_name(recipe, n): p for n, p in params.items()}
    upstream["decode_head.mlp.0.0.weight"] = upstream["decode_head.mlp.0.0.weight"].flatten(1)  # a Linear upstream
    assert set(convert_state_dict(model_info(name).architecture, upstream)) == set(params)


def test_emanet_detectron2_groups():
    # detectron2 at 83670010: names ending norm.weight/norm.bias: wd 0 at the base rate; other names ending .bias:
    # lr x 2, wd 0 (the backbone's BatchNorms are bn1, bn2, ...: their weights decay, their biases take the bias rule).
    lrs = _lr_and_decay(build_optimizer(_meta_model("emanet_r50_coco"), get_recipe("emanet_r50_coco")))
    assert lrs["backbone.bn1.weight"] == (9e-3, 1e-4)
    assert lrs["backbone.bn1.bias"] == (0.018, 0.0)
    assert lrs["decode_head.emau.conv2.norm.weight"] == (9e-3, 0.0)
    assert lrs["decode_head.predictor_conv.norm.bias"] == (9e-3, 0.0)
    assert lrs["decode_head.emau.conv1.bias"] == (0.018, 0.0)
    assert lrs["decode_head.conv_seg.bias"] == (0.018, 0.0)
    assert lrs["decode_head.reduced_conv.weight"] == (9e-3, 1e-4)


def test_emanet_parameter_histogram_is_upstreams():
    """(lr, weight decay) -> number of parameters, as detectron2 at 83670010 grouped emanet_r50_cityscapes."""
    name = "emanet_r50_cityscapes"
    model = _meta_model(name)
    histogram = Counter()
    for group in build_optimizer(model, get_recipe(name)).param_groups:
        histogram[(group["lr"], group["weight_decay"])] += sum(p.numel() for p in group["params"])
    assert histogram == {(0.009, 1e-4): 34_751_040, (0.018, 0.0): 27_283, (0.009, 0.0): 2_560}


def test_glore_groups():
    optimizer = build_optimizer(_meta_model("glore_r50_fcn_cityscapes"), get_recipe("glore_r50_fcn_cityscapes"))
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [(0.01, 1e-4)]


# ---- schedules: rate at iterations 0, 1, end of warm-up, middle, last ----


def _rates(name, base_lr, iterations):
    recipe = get_recipe(name)
    return [learning_rate(recipe.schedule, recipe.iters, base_lr, i) for i in iterations]


def test_mmcv_poly_with_linear_warmup():
    # 160k, power 1, min_lr 0, warm-up 1500 from 1e-6: the decayed poly value times 1 - (1 - i/1500)(1 - 1e-6)
    got = _rates("moganet_s_upernet_ade20k", 1e-4, [0, 1, 1500, 80_000, 159_999])
    want = [
        1e-4 * 1e-6,
        1e-4 * (159_999 / 160_000) * (1 - (1499 / 1500) * (1 - 1e-6)),
        1e-4 * (158_500 / 160_000),
        5e-5,
        1e-4 / 160_000,
    ]
    assert got == pytest.approx(want, rel=1e-12)


def test_mmcv_poly_without_warmup():
    got = _rates("moganet_s_fpn_ade20k", 2e-4, [0, 1, 40_000, 79_999])
    want = [2e-4, 2e-4 * (79_999 / 80_000) ** 0.9, 2e-4 * 0.5**0.9, 2e-4 * (1 / 80_000) ** 0.9]
    assert got == pytest.approx(want, rel=1e-12)
    assert _rates("glore_r50_fcn_cityscapes", 0.01, [20_000]) == pytest.approx([0.01 * 0.5**0.9])


def test_mmcv_cosine_restart_with_warmup():
    # periods 20k/40k/100k, weights 1/0.5/0.25, to 0; warm-up factor on the cosine value
    got = _rates("regproxy_vit_b16_ade20k", 6e-5, [0, 1, 1500, 20_000, 40_000, 159_999])
    want = [
        6e-5 * 1e-6,
        6e-5 * 0.5 * (1 + math.cos(math.pi / 20_000)) * (1 - (1499 / 1500) * (1 - 1e-6)),
        6e-5 * 0.5 * (1 + math.cos(math.pi * 1500 / 20_000)),
        6e-5 * 0.5,  # restart at half weight
        6e-5 * 0.5 * 0.5 * 1.0,  # half-way through the 40k period: cos = 0
        6e-5 * 0.25 * 0.5 * (1 + math.cos(math.pi * 99_999 / 100_000)),
    ]
    assert got == pytest.approx(want, rel=1e-9)


def test_detectron2_warmup_cosine():
    # 30k, warm-up 1000 from factor 1e-3: factor 1e-3 * (1 - i/1000) + i/1000 times the half cosine over 30k
    got = _rates("emanet_r50_coco", 9e-3, [0, 1, 1000, 15_000, 29_999])
    want = [
        9e-3 * 1e-3,
        9e-3 * 0.001999 * 0.5 * (1 + math.cos(math.pi / 30_000)),
        9e-3 * 0.5 * (1 + math.cos(math.pi / 30)),
        4.5e-3,
        9e-3 * 0.5 * (1 + math.cos(math.pi * 29_999 / 30_000)),
    ]
    assert got == pytest.approx(want, rel=1e-9)


def test_scheduler_steps_per_iteration_on_each_group_base():
    model, recipe = _meta_model("emanet_r50_coco"), get_recipe("emanet_r50_coco")
    optimizer = build_optimizer(model, recipe)
    scheduler = build_lr_scheduler(optimizer, recipe)
    for iteration in range(3):  # iteration i trains with upstream's rate for i
        for group in optimizer.param_groups:
            base = 9e-3 * group["lr_mult"]
            assert group["lr"] == pytest.approx(learning_rate(recipe.schedule, 30_000, base, iteration), rel=1e-12)
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(
        9e-3 * (1e-3 * 0.997 + 0.003) * 0.5 * (1 + math.cos(3 * math.pi / 30_000))
    )


# ---- loss conventions on a tiny example ----


class _FixedLogits(nn.Module):
    """Zero logits over 2 classes for a 1x2 image: every pixel's cross-entropy is ln 2."""

    def forward(self, images):
        logits = torch.zeros(1, 2, 1, 2)
        return {"out": logits, "aux": logits}


def test_mmseg_mean_counts_ignored_pixels_and_weights_aux():
    labels = torch.tensor([[[0, 255]]])
    losses = compute_losses(_FixedLogits(), torch.zeros(1, 3, 1, 2), labels, get_recipe("moganet_s_upernet_ade20k"))
    assert losses["loss_decode"].item() == pytest.approx(math.log(2) / 2)  # (ln 2 + 0) / 2 pixels
    assert losses["loss_aux"].item() == pytest.approx(0.4 * math.log(2) / 2)
    assert losses["loss"].item() == pytest.approx(1.4 * math.log(2) / 2)


def test_detectron2_mean_skips_ignored_pixels():
    labels = torch.tensor([[[0, 255]]])
    losses = compute_losses(_FixedLogits(), torch.zeros(1, 3, 1, 2), labels, get_recipe("emanet_r50_coco"))
    assert set(losses) == {"loss_sem_seg", "loss"}
    assert losses["loss"].item() == pytest.approx(math.log(2))  # ln 2 / 1 counted pixel


def test_losses_need_training_mode():
    class Eval(nn.Module):
        def forward(self, images):
            return torch.zeros(1, 2, 1, 2)

    with pytest.raises(TypeError, match="training mode"):
        compute_losses(
            Eval(), torch.zeros(1, 3, 1, 2), torch.zeros(1, 1, 2, dtype=torch.long), get_recipe("emanet_r50_coco")
        )
