"""Dropout and drop-path masks keyed by (seed, stream position, module, call): independent of how a batch is split,
different for another seed, the same function in distribution, the identity in eval mode."""

from __future__ import annotations

import pickle

import pytest
import timm.layers
import torch
from torch import nn

import segzoo
import segzoo.layers
from segzoo.training.drops import DrawKeys, SeededDrop, seed_drops


def masks(drop: SeededDrop, positions: list[int], shape: tuple[int, ...] = (3, 4, 5)) -> torch.Tensor:
    """What ``drop`` multiplies a batch of ones at ``positions`` by."""
    drop.keys.start(positions)
    return drop(torch.ones(len(positions), *shape))


@pytest.mark.parametrize("unit", ["element", "channel", "sample"])
def test_a_samples_mask_depends_on_its_position_not_on_the_batch_it_is_in(unit: str) -> None:
    drop = SeededDrop(0.5, unit, DrawKeys(seed=7), index=0).train()
    together = masks(drop, list(range(10, 26)))
    apart = torch.cat([masks(drop, [10, 11, 12]), masks(drop, [13]), masks(drop, list(range(14, 26)))])
    assert torch.equal(together, apart)
    assert not all(torch.equal(together[0], mask) for mask in together)  # each position draws its own


@pytest.mark.parametrize("unit", ["element", "channel", "sample"])
def test_another_seed_module_or_call_draws_other_masks(unit: str) -> None:
    keys = DrawKeys(seed=7)
    drop = SeededDrop(0.5, unit, keys, index=0).train()
    reference = masks(drop, list(range(8)))
    assert not torch.equal(reference, masks(SeededDrop(0.5, unit, DrawKeys(seed=8), index=0).train(), list(range(8))))
    assert not torch.equal(reference, masks(SeededDrop(0.5, unit, keys, index=1).train(), list(range(8))))
    keys.start(list(range(8)))
    first, second = drop(torch.ones(8, 3, 4, 5)), drop(torch.ones(8, 3, 4, 5))  # a module run twice in a forward
    assert torch.equal(first, reference) and not torch.equal(first, second)


def test_masks_drop_what_torch_and_timm_drop() -> None:
    """The fraction dropped is p, kept values are scaled by 1 / (1 - p), channel and sample masks are constant over
    what they cover."""
    p = 0.25
    kept = torch.tensor(1 / (1 - p)).item()  # in float32, as the masks hold it
    keys = DrawKeys(seed=0)
    element = masks(SeededDrop(p, "element", keys, 0).train(), list(range(64)), (4, 32, 32))
    assert set(element.unique().tolist()) == {0.0, kept}
    assert abs((element == 0).float().mean().item() - p) < 0.01
    channel = masks(SeededDrop(p, "channel", keys, 1).train(), list(range(512)), (8, 2, 2))
    assert torch.equal(channel, channel[..., :1, :1].expand_as(channel))
    assert abs((channel == 0).float().mean().item() - p) < 0.02
    sample = masks(SeededDrop(p, "sample", keys, 2).train(), list(range(4096)), (3,))
    assert torch.equal(sample, sample[:, :1].expand_as(sample))
    assert abs((sample == 0).float().mean().item() - p) < 0.02
    unscaled = masks(SeededDrop(p, "sample", keys, 3, scale=False).train(), list(range(64)), (3,))
    assert set(unscaled.unique().tolist()) == {0.0, 1.0}


def test_eval_mode_is_the_identity_and_needs_no_positions() -> None:
    drop = SeededDrop(0.5, "element", DrawKeys(seed=0), index=0).eval()
    x = torch.randn(2, 3)
    assert drop(x) is x


def test_a_training_forward_without_positions_says_what_to_do() -> None:
    drop = SeededDrop(0.5, "sample", DrawKeys(seed=0), index=0).train()
    with pytest.raises(RuntimeError, match="DrawKeys.start"):
        drop(torch.ones(2, 3))


def test_seed_drops_replaces_an_entrys_drops_and_keeps_its_state_dict() -> None:
    model = segzoo.create_model("moganet_xt_fpn_ade20k", num_classes=3, drop_path_rate=0.2).eval()
    x = torch.randn(1, 3, 64, 64)
    before_keys, before_output = list(model.state_dict()), model(x)
    expected = sum(
        isinstance(m, (segzoo.layers.DropPath, nn.Dropout2d)) and m.p > 0 for m in model.modules()
    )  # MogaNet's FFN dropout is 0: left as it is
    keys = seed_drops(model, seed=0)
    replaced = [m for m in model.modules() if isinstance(m, SeededDrop)]
    assert len(replaced) == expected > 1 and sorted(m.index for m in replaced) == list(range(expected))
    assert not any(isinstance(m, segzoo.layers.DropPath) and m.p > 0 for m in model.modules())
    assert list(model.state_dict()) == before_keys
    assert torch.equal(model(x), before_output)
    copy = pickle.loads(pickle.dumps(model)).train()
    copy_keys = {id(m.keys): m.keys for m in copy.modules() if isinstance(m, SeededDrop)}
    assert len(copy_keys) == 1 and keys not in copy_keys.values()  # the copy's drops share their own keys
    keys.start([5])
    next(iter(copy_keys.values())).start([5])
    assert torch.equal(copy(x)["out"], model.train()(x)["out"])


def test_timm_drop_path_and_attention_dropout_draw_from_the_keys() -> None:
    """timm's DropPath is replaced; attention with dropout runs unfused so that its ``attn_drop`` module draws instead
    of the fused kernel (which would draw from the global generator)."""
    model = nn.Sequential(
        timm.layers.Attention(8, num_heads=2, attn_drop=0.1),
        timm.layers.DropPath(0.3),
        nn.Dropout(0.0),
    )
    model[0].fused_attn = True
    keys = seed_drops(model, seed=0)
    assert isinstance(model[0].attn_drop, SeededDrop) and not model[0].fused_attn
    assert isinstance(model[1], SeededDrop) and model[1].p == 0.3
    assert type(model[2]) is nn.Dropout  # drops nothing: left as it is
    x = torch.randn(2, 5, 8)
    keys.start([3, 4])
    first = model.train()(x)
    torch.manual_seed(123)  # the global generator plays no part
    keys.start([3, 4])
    assert torch.equal(model(x), first)
