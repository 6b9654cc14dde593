"""A family is one place: a toy family declared in this module alone reaches every part of segzoo.

The toy (a two-stage conv backbone, an FCN head, two entries) registers the way ``segzoo/families/*.py`` do;
the fixture takes it out of the registry again after each test.
"""

import importlib.util
import json
from collections.abc import Sequence

import pytest
import torch
from torch import nn

import segzoo
from segzoo.cards import render_model_card
from segzoo.cli import main
from segzoo.export import check_supported, support_rows
from segzoo.families import EXPORTS_DYNAMICALLY, Architecture, Family, _registry, register_family
from segzoo.features import FeatureExtractor, stage_features
from segzoo.heads import FCNHead
from segzoo.segmentors import EncoderDecoder
from segzoo.training import recipes
from segzoo.training.recipe import Recipe
from segzoo.training.recipes import get_recipe, recipe_from_registry, register_recipes
from segzoo.zoo.records import IMAGENET_RGB, InferencePipeline, ModelInfo, Paper, ReportedMetric, UpstreamConfig
from tests.conftest import REPO


class ToyBackbone(nn.Module):
    """Two conv-BN-ReLU stages at strides 2 and 4."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.out_channels = (width, 2 * width)
        self.stage1 = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stage2 = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        first = self.stage1(x)
        return [first, self.stage2(first)]

    def feature_extractor(self, out_indices: Sequence[int] | None) -> FeatureExtractor:
        info, picks = stage_features(self, out_indices, ("stage1", "stage2"), (2, 4))
        return FeatureExtractor(self, info, picks)


def toy_fcn(width: int, num_classes: int = 5) -> EncoderDecoder:
    backbone = ToyBackbone(width)
    return EncoderDecoder(backbone, FCNHead(2 * width, 16, num_classes, in_index=1))


def _entry(size: str, width: int) -> ModelInfo:
    return ModelInfo(
        name=f"toy_{size}_fcn_shapes",
        family="toy",
        paper=Paper("A Toy Family", "0000.00000", "nowhere"),
        backbone=f"Toy-{size.upper()}",
        head="FCN",
        dataset="Shapes",
        num_classes=5,
        crop_size=(64, 64),
        normalization=IMAGENET_RGB,
        test_pipeline=InferencePipeline(scale=(128, 64), size_divisor=None, mode="whole"),
        align_corners=False,
        reported_metrics=(ReportedMetric("mean_iou", "mIoU", 12.5),),
        params_m=None,
        flops_g=None,
        flops_input_shape=None,
        num_params=0,
        train_iters=100,
        train_batch_size=2,
        weights=(),
        license="Apache-2.0",
        citation="@misc{toy}",
        upstream=UpstreamConfig("toy/toy", "configs/toy.py", "0" * 40),
        architecture="toy_fcn",
        arch_args={"width": width},
    )


TOY = Family(
    name="toy",
    label="Toy",
    colour="#000000",
    entries=(_entry("s", 8), _entry("m", 16)),
    architectures=(Architecture(toy_fcn, export=EXPORTS_DYNAMICALLY),),
)


def toy_recipe(info: ModelInfo) -> Recipe:
    """The toy trains like a MogaNet Semantic-FPN model, for its own iterations, batch and crop."""
    like = get_recipe("moganet_xt_fpn_ade20k")
    return recipe_from_registry(
        info, optimizer=like.optimizer, schedule=like.schedule, losses=like.losses, pipeline=like.pipeline, gpus=1
    )


@pytest.fixture
def toy_family(monkeypatch):
    segzoo.families.families()  # the real families and recipes first, so that the toy registers on top of them
    recipes._registry.discover_recipes()
    monkeypatch.setattr(_registry, "_FAMILIES", dict(_registry._FAMILIES))
    monkeypatch.setattr(_registry, "_ARCHITECTURES", dict(_registry._ARCHITECTURES))
    monkeypatch.setattr(recipes._registry, "RECIPE_BUILDERS", dict(recipes._registry.RECIPE_BUILDERS))
    register_recipes("toy", toy_recipe)
    return register_family(TOY)


def test_toy_entries_are_listed_and_built(toy_family):
    assert segzoo.list_models("toy_*") == ["toy_m_fcn_shapes", "toy_s_fcn_shapes"]
    assert segzoo.list_aliases()["toy_s_fcn"] == "toy_s_fcn_shapes"
    model = segzoo.create_model("toy_s_fcn")
    assert model.info.family == "toy" and not model.training
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5, 64, 64)


def test_toy_backbone_and_fast_path(toy_family):
    backbone = segzoo.create_backbone("toy_m_fcn_shapes", pretrained=False, out_indices=(1,))
    assert backbone.feature_info.channels() == [32] and backbone.feature_info.reduction() == [4]
    model = segzoo.create_model("toy_m_fcn_shapes")
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    images = torch.randn(2, 3, 64, 96)
    fast = segzoo.optimize_for_inference(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    torch.testing.assert_close(fast(images), model(images), rtol=1e-5, atol=1e-5)


def test_toy_export_support_and_card(toy_family):
    rows = {tuple(names): row for names, row in support_rows()}
    assert rows[("toy_m_fcn_shapes", "toy_s_fcn_shapes")] is TOY.architectures[0].export
    check_supported(segzoo.model_info("toy_s_fcn"), "onnx", dynamic=True)
    card = render_model_card(segzoo.model_info("toy_s_fcn_shapes"))
    assert "toy_s_fcn_shapes" in card and "A Toy Family" in card


def test_toy_entries_get_hubconf_entry_points(toy_family):
    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert hubconf.toy_s_fcn().info.name == "toy_s_fcn_shapes"


def test_toy_recipe_prints(toy_family, capsys):
    assert main(["train", "toy_s_fcn_shapes", "--print-recipe"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["name"] == "toy_s_fcn_shapes" and printed["iters"] == 100 and printed["crop_size"] == [64, 64]


def test_the_toy_leaves_the_registry_after_its_tests():
    assert not segzoo.list_models("toy_*") and "toy" not in recipes._registry.RECIPE_BUILDERS
