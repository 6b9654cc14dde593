"""The inference fast path computes the eager model's function, on every registry entry, and its models pickle."""

import copy
import io
import pickle

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

import segzoo
from segzoo import optimize
from segzoo.features import FeatureExtractor
from segzoo.optimize import EvalOnly, optimize_for_inference
from tests.conftest import ONE_PER_ARCHITECTURE

# One entry per architecture (and per ViT kind) in the default suite; the whole registry under -m slow.
PER_ARCHITECTURE = [
    "moganet_xt_fpn_ade20k",
    "moganet_xt_upernet_ade20k",
    "emanet_r50_cityscapes",
    "glore_r50_fcn_cityscapes",
    "regproxy_vit_ti16_ade20k",
    "regproxy_r26_vit_s32_ade20k",
    "eurnet_t_upernet_ade20k",
]
ENTRIES = [pytest.param(n, marks=() if n in PER_ARCHITECTURE else pytest.mark.slow) for n in segzoo.list_models()]
RTOL = 1e-5


def input_size(name: str) -> tuple[int, int]:
    """The smallest cheap non-square input the architecture takes (EurNet's kNN needs 11 patches at stride 32)."""
    return (128, 160) if name.startswith("eurnet") else (64, 96)


def randomize_folded_statistics(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm running statistics and affine parameters far from the identity, and the layer and
    element scales (and GloRe's zero-initialized blocker) sizeable values: otherwise folding is trivially exact."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                c = module.num_features
                module.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                module.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                module.weight.copy_(torch.rand(c, generator=g) + 0.5)
                module.bias.copy_(torch.randn(c, generator=g) * 0.2)
        for name, param in model.named_parameters():
            if "layer_scale" in name or "sigma" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.5)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / ref.abs().max()).item()


def random_input(name: str) -> torch.Tensor:
    return torch.randn(1, 3, *input_size(name), generator=torch.Generator().manual_seed(1))


def check_fast_path(name: str) -> None:
    model = segzoo.create_model(name)
    randomize_folded_statistics(model)
    x = random_input(name)
    with torch.inference_mode():
        ref = model(x)
        fast = optimize_for_inference(model)
        out = fast(x)
        assert relative_error(out, ref) < RTOL
        assert out.is_contiguous(memory_format=torch.channels_last), "the CPU's final resize runs channels-last"
        assert torch.equal(model(x), ref), "the original model must be left as it was"
    assert not any(isinstance(m, _BatchNorm) for m in fast.modules()), "a BatchNorm was left unfolded"
    assert not any(p.requires_grad for p in fast.parameters())


@pytest.mark.parametrize("name", ENTRIES)
def test_fast_path_equals_eager(name):
    check_fast_path(name)


@pytest.fixture(scope="module")
def moganet():
    model = segzoo.create_model("moganet_xt_upernet_ade20k")
    randomize_folded_statistics(model)
    return model


@pytest.mark.parametrize("channels_last", [True, False])
def test_memory_format_choice_keeps_the_function(moganet, channels_last):
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        out = optimize_for_inference(moganet, channels_last=channels_last)(x)
        assert relative_error(out, moganet(x)) < RTOL


def test_fast_model_refuses_training(moganet):
    fast = optimize_for_inference(moganet)
    with pytest.raises(RuntimeError, match="optimized for inference.*fuse=False"):
        fast.train()
    assert fast.eval() is fast and not fast.training
    assert fast.info is moganet.info and fast.num_classes == moganet.num_classes


def test_rejects_unknown_memory_format(moganet):
    with pytest.raises(ValueError, match="channels_last must be"):
        optimize_for_inference(moganet, channels_last="yes")


def test_create_model_fuse():
    fast = segzoo.create_model("moganet_xt_fpn_ade20k", fuse=True)
    assert not any(isinstance(m, _BatchNorm) for m in fast.modules())
    with pytest.raises(RuntimeError, match="optimized for inference"):
        fast.train()


def test_predict_runs_on_the_fast_path(moganet):
    image = torch.randint(0, 255, (3, 70, 90), dtype=torch.uint8)
    ref = segzoo.predict(moganet, image, return_scores=True)
    fast = segzoo.predict(optimize_for_inference(moganet), image, return_scores=True)
    assert relative_error(fast.scores, ref.scores) < RTOL


def torch_save_round_trip(model: torch.nn.Module) -> torch.nn.Module:
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("name", ONE_PER_ARCHITECTURE)
def test_fast_model_pickles(name):
    """torch.save, pickle and deepcopy give back the same fast model: same outputs, still eval-only."""
    model = segzoo.create_model(name)
    randomize_folded_statistics(model)
    x = random_input(name)
    fast = optimize_for_inference(model)
    copies = [torch_save_round_trip(fast), pickle.loads(pickle.dumps(fast)), copy.deepcopy(fast)]
    with torch.inference_mode():
        out = fast(x)
        assert relative_error(out, model(x)) < RTOL
        for again in copies:
            assert type(again) is type(fast) and torch.equal(again(x), out)
    for again in copies:
        with pytest.raises(RuntimeError, match="optimized for inference"):
            again.train()


def test_rewrite_table_runs_in_phase_order():
    table = optimize.rewrite_table()
    assert [optimize.PHASES.index(r.phase) for r in table] == sorted(optimize.PHASES.index(r.phase) for r in table)
    assert len({r.name for r in table}) == len(table), "rewrite names must be unique"
    central = open(optimize.__file__).read()
    assert "segzoo.backbones" not in central and "segzoo.heads" not in central, "the central module names a family"


def test_fast_feature_extractor_keeps_its_keys():
    """optimize_for_inference(create_backbone(...)) is a FeatureExtractor whose state dict keys are rooted as the
    eager extractor's (no wrapper prefix)."""
    extractor = segzoo.create_backbone("moganet_xt_fpn_ade20k", pretrained=False)
    randomize_folded_statistics(extractor)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    fast = optimize_for_inference(extractor)
    assert isinstance(fast, EvalOnly) and isinstance(fast, FeatureExtractor)
    assert fast.feature_info == extractor.feature_info
    assert all(key.startswith("backbone.") for key in fast.state_dict())
    reloaded = torch_save_round_trip(fast)
    with torch.inference_mode():
        for out, again, ref in zip(fast(x), reloaded(x), extractor(x)):
            assert relative_error(out, ref) < RTOL and torch.equal(again, out)
    with pytest.raises(RuntimeError, match="optimized for inference"):
        reloaded.train()


class _UserModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.stem(images)


def test_a_model_without_fast_class_is_wrapped():
    """A module segzoo has no fast class for is wrapped: eval-only, same outputs, the same state dict keys."""
    model = _UserModel().eval()
    randomize_folded_statistics(model)
    x = torch.randn(1, 3, 16, 20, generator=torch.Generator().manual_seed(2))
    fast = optimize_for_inference(model)
    assert isinstance(fast, EvalOnly) and list(fast.state_dict()) == ["stem.0.weight", "stem.0.bias"]
    fast.load_state_dict(fast.state_dict())
    reloaded = torch_save_round_trip(fast)
    with torch.inference_mode():
        assert relative_error(fast(x), model(x)) < RTOL and torch.equal(reloaded(x), fast(x))
    with pytest.raises(RuntimeError, match="optimized for inference"):
        reloaded.train()
