"""ImageNet backbone files: registry records, fetch through a local server, zip safety, per-family strict loads."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import zipfile
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

import segzoo
from segzoo.families.emanet import convert_imagenet_resnet
from segzoo.families.eurnet import convert_imagenet_eurnet
from segzoo.families.regproxy import convert_imagenet_vit
from segzoo.registry import load_imagenet_backbone
from segzoo.weights import CheckpointError, CheckpointMismatchError, WeightsError
from segzoo.weights.archive import extracted_checkpoint, safe_members
from segzoo.weights.checkpoint import load_state_dict_strict
from segzoo.zoo import WeightSource

MOGANET, RESNET, VIT = "moganet_xt_fpn_ade20k", "emanet_r50_coco", "regproxy_vit_ti16_ade20k"
EURNET = "eurnet_t_upernet_ade20k"


def _serve_as_backbone(monkeypatch, name: str, source: WeightSource | None) -> None:
    from segzoo import registry

    info = dataclasses.replace(registry._catalog().by_name[name], pretrained_backbone=source)
    monkeypatch.setitem(registry._catalog().by_name, name, info)


def _random_like(state_dict: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: (torch.rand(v.shape, generator=g) if v.is_floating_point() else v.clone()) for k, v in state_dict.items()
    }


@pytest.fixture(scope="module")
def models():
    return {name: segzoo.create_model(name) for name in (MOGANET, RESNET, VIT)}


def test_every_entry_records_its_imagenet_file_or_says_why_not():
    for name in segzoo.list_models():
        info = segzoo.model_info(name)
        if info.pretrained_backbone is None:
            assert any("ImageNet backbone" in note for note in info.notes), name
    sources = {segzoo.model_info(n).pretrained_backbone for n in segzoo.list_models()} - {None}
    assert len(sources) == 5 + 3 + 3 + 6  # MogaNet sizes, EurNet sizes, ResNet depths, ViTs
    # entries sharing a backbone share one source object's file
    assert (
        segzoo.model_info("moganet_s_fpn_ade20k").pretrained_backbone
        == segzoo.model_info("moganet_s_upernet_ade20k").pretrained_backbone
    )


def test_moganet_release_loads_strictly_without_its_classifier(models, file_server, monkeypatch):
    backbone = models[MOGANET].backbone
    weights = _random_like(backbone.state_dict())
    classifier = {"head.weight": torch.randn(1000, 192), "head.bias": torch.randn(1000)}
    # the timm training checkpoint as extract_ckpt.py leaves it (plain data only)
    torch.save(
        {
            "state_dict": {**weights, **classifier},
            "state_dict_ema": weights,
            "arch": "moganet_xtiny",
            "metric": 76.5,
            "author": "MogaNet",
        },
        file_server.root / "moganet_xtiny.pth.tar",
    )
    _serve_as_backbone(monkeypatch, MOGANET, WeightSource(f"{file_server.url}/moganet_xtiny.pth.tar", "pytorch"))
    model = segzoo.create_model(MOGANET)
    head_before = {k: v.clone() for k, v in model.decode_head.state_dict().items()}
    load_imagenet_backbone(model, MOGANET, progress=False)
    loaded = model.backbone.state_dict()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    assert all(torch.equal(v, model.decode_head.state_dict()[k]) for k, v in head_before.items())


def _encoding_zip(path: Path, state_dict: dict[str, torch.Tensor], extra: dict[str, bytes] | None = None) -> Path:
    pth = path.with_suffix(".pth")
    torch.save(state_dict, pth, _use_new_zipfile_serialization=False)  # the 2018 legacy pickle format
    with zipfile.ZipFile(path, "w") as zf:
        zf.write(pth, pth.name)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    pth.unlink()
    return path


def test_encoding_resnet_zip_loads_strictly(models, file_server, monkeypatch):
    backbone = models[RESNET].backbone
    weights = {k: v for k, v in _random_like(backbone.state_dict()).items() if "num_batches_tracked" not in k}
    upstream = {**weights, "fc.weight": torch.randn(1000, 2048), "fc.bias": torch.randn(1000)}
    _encoding_zip(file_server.root / "resnet50-25c4b509.zip", upstream)
    _serve_as_backbone(
        monkeypatch, RESNET, WeightSource(f"{file_server.url}/resnet50-25c4b509.zip", "pytorch", kind="archive")
    )
    model = segzoo.create_model(RESNET)
    load_imagenet_backbone(model, RESNET, progress=False)
    loaded = model.backbone.state_dict()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    assert "fc.weight" not in loaded


def test_resnet_converter_drops_exactly_the_classifier():
    converted = convert_imagenet_resnet(
        {
            "fc.weight": torch.ones(2, 2),
            "fc.bias": torch.ones(2),
            "bn1.running_mean": torch.ones(2),
            "extra.w": torch.ones(1),
        },
        None,
    )
    assert set(converted) == {"bn1.running_mean", "bn1.num_batches_tracked", "extra.w"}


def test_vit_file_at_384_is_resized_to_the_crop_grid_like_upstream(models, file_server, monkeypatch):
    backbone = models[VIT].backbone
    weights = _random_like(backbone.state_dict())
    pos_384 = torch.randn(1, 1 + 24 * 24, 192)
    upstream = {**weights, "pos_embed": pos_384, "head.weight": torch.randn(1000, 192), "head.bias": torch.randn(1000)}
    safetensors.torch.save_file(upstream, file_server.root / "vit_tiny.safetensors")
    _serve_as_backbone(monkeypatch, VIT, WeightSource(f"{file_server.url}/vit_tiny.safetensors", "safetensors"))
    model = segzoo.create_model(VIT)
    load_imagenet_backbone(model, VIT, progress=False)
    grid = pos_384[:, 1:].reshape(1, 24, 24, 192).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(32, 32), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    assert torch.allclose(model.backbone.pos_embed[:, 1:], expected, atol=1e-6)
    assert torch.equal(model.backbone.pos_embed[:, :1], pos_384[:, :1])
    assert torch.equal(model.backbone.blocks[0].attn.qkv.weight, weights["blocks.0.attn.qkv.weight"])


def test_deit_distilled_keeps_both_prefix_tokens_and_drops_both_heads():
    from segzoo.backbones.vit import ViT

    backbone = ViT("ti16", (512, 512), (4, 11), distilled=True)
    deit = {k: v.clone() for k, v in backbone.state_dict().items()}
    deit["pos_embed"] = torch.randn(1, 2 + 24 * 24, 192)
    deit |= {
        "head.weight": torch.ones(1000, 192),
        "head.bias": torch.ones(1000),
        "head_dist.weight": torch.ones(1000, 192),
        "head_dist.bias": torch.ones(1000),
    }
    converted = convert_imagenet_vit(deit, backbone)
    assert not any(k.startswith("head") for k in converted)
    assert converted["pos_embed"].shape == backbone.pos_embed.shape
    assert torch.equal(converted["pos_embed"][:, :2], deit["pos_embed"][:, :2])
    backbone.load_state_dict(converted, strict=True)


def test_a_file_of_another_model_is_named_and_removed(models, file_server, monkeypatch, isolated_cache):
    torch.save(
        {"state_dict": {"head.weight": torch.ones(3), "stem.conv.weight": torch.ones(3)}},
        file_server.root / "other.pth",
    )
    _serve_as_backbone(monkeypatch, MOGANET, WeightSource(f"{file_server.url}/other.pth", "pytorch"))
    with pytest.raises(CheckpointMismatchError, match=r"other\.pth \(ImageNet backbone of moganet_xt_fpn_ade20k\)"):
        load_imagenet_backbone(segzoo.create_model(MOGANET), MOGANET, progress=False)
    assert not (isolated_cache / "other.pth").exists()  # unpinned and unloadable: not kept


def test_a_web_page_instead_of_the_file_is_named(file_server, monkeypatch):
    (file_server.root / "page.pth").write_text("<!DOCTYPE html><html>login</html>")
    _serve_as_backbone(monkeypatch, MOGANET, WeightSource(f"{file_server.url}/page.pth", "pytorch"))
    with pytest.raises(CheckpointError, match="web page"):
        load_imagenet_backbone(segzoo.create_model(MOGANET), MOGANET, progress=False)


@pytest.mark.parametrize("member, why", [("../escape.pth", "'..'"), ("/abs.pth", "absolute path")])
def test_hostile_zip_members_are_refused(tmp_path, member, why):
    path = tmp_path / "resnet.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("resnet.pth", b"x")
        zf.writestr(member, b"x")
    with pytest.raises(CheckpointError, match=why):
        safe_members(path)


def test_zip_symlink_is_refused(tmp_path):
    path = tmp_path / "resnet.zip"
    with zipfile.ZipFile(path, "w") as zf:
        link = zipfile.ZipInfo("resnet.pth")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(CheckpointError, match="link"):
        safe_members(path)


def test_zip_limits_and_streamed_extraction(tmp_path, monkeypatch):
    path = tmp_path / "resnet.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("readme.txt", b"a")
        zf.writestr("resnet.pth", b"\0" * 4096)
    with extracted_checkpoint(path) as checkpoint:
        assert checkpoint.name == "resnet.pth" and checkpoint.stat().st_size == 4096
    monkeypatch.setenv("SEGZOO_ARCHIVE_MAX_MEMBER_BYTES", "1000")
    with pytest.raises(CheckpointError, match="byte limit"):
        safe_members(path)
    monkeypatch.setenv("SEGZOO_ARCHIVE_MAX_MEMBERS", "1")
    with pytest.raises(CheckpointError, match="more than 1 members"):
        safe_members(path)


def test_entries_without_a_loadable_imagenet_file_say_why(monkeypatch):
    _serve_as_backbone(monkeypatch, "glore_r50_fcn_cityscapes", None)
    with pytest.raises(WeightsError, match="paper names none"):
        load_imagenet_backbone(torch.nn.Module(), "glore_r50_fcn_cityscapes")


def test_glore_assumes_the_deep_stem_resnets_emanet_names():
    for depth in (50, 101):
        glore = segzoo.model_info(f"glore_r{depth}_fcn_cityscapes")
        assert glore.pretrained_backbone == segzoo.model_info(f"emanet_r{depth}_coco").pretrained_backbone
        assert any("Assumed: training starts from the deep-stem ImageNet ResNets" in n for n in glore.notes)


@pytest.fixture(scope="module")
def eurnet_backbone():
    return segzoo.create_model(EURNET).backbone


def _eurnet_imagenet_file(backbone: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Random tensors named and shaped as EurNet-T's ImageNet classification model (upstream's main branch).

    Against the segmentation backbone it has a ``(1, H*W, C)`` position embedding, one 7x7 context kernel per
    block and so one context row in ``weight_linear``, the kNN edges' relative-position tables, and the
    classifier with its norm instead of ``norm0``..``norm3``.
    """
    g = torch.Generator().manual_seed(1)
    out = {}
    for key, tensor in backbone.state_dict().items():
        shape = tensor.shape
        if key.startswith("norm") or ".context_layers.1." in key or ".context_layers.2." in key:
            continue
        if key == "absolute_pos_embed":
            shape = (1, shape[2] * shape[3], shape[1])
        elif ".context_layers.0." in key:
            shape = (*shape[:2], 7, 7)
        elif ".weight_linear." in key:
            shape = (shape[0] - 2, *shape[1:])
        out[key] = torch.rand(shape, generator=g)
    for stage, side in ((1, 28), (2, 14), (3, 7)):
        out[f"stages.{stage}.graph_construction_model.edge_layers.1.relative_pos"] = torch.rand(1, side**2, side**2)
    classifier = {
        "norm.weight": torch.rand(768),
        "norm.bias": torch.rand(768),
        "head.weight": torch.rand(1000, 768),
        "head.bias": torch.rand(1000),
    }
    return {**out, **classifier}


def test_eurnet_imagenet_file_loads_strictly_as_upstream_adapts_it(eurnet_backbone, file_server, monkeypatch, caplog):
    upstream = _eurnet_imagenet_file(eurnet_backbone)
    # the classification runner's checkpoint: the weights under "model", with its training state
    torch.save(
        {
            "model": upstream,
            "optimizer": {"state": {}, "param_groups": []},
            "lr_scheduler": {"last_epoch": 300},
            "loss_scaler": {"scale": 65536.0},
            "epoch": 300,
            "args": {"arch": "eurnet"},
            "max_accuracy": 82.3,
        },
        file_server.root / "td_eurnet_tiny_1k_pretrain.pth",
    )
    source = WeightSource(f"{file_server.url}/td_eurnet_tiny_1k_pretrain.pth", "pytorch")
    _serve_as_backbone(monkeypatch, EURNET, source)
    model = torch.nn.Module()
    model.backbone = copy.deepcopy(eurnet_backbone)
    initial = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    with caplog.at_level("INFO", logger="segzoo"):
        load_imagenet_backbone(model, EURNET, progress=False)
    loaded = model.backbone.state_dict()

    grid = upstream["absolute_pos_embed"].view(1, 56, 56, 96).permute(0, 3, 1, 2)
    assert torch.equal(loaded["absolute_pos_embed"], grid)
    for block in ("stages.0.blocks.1", "stages.2.blocks.5"):
        kernel = f"{block}.graph_conv.context_layers.0.0.weight"
        padded = torch.zeros(loaded[kernel].shape)
        padded[:, :, 1:8, 1:8] = upstream[kernel]
        assert loaded[kernel].shape[-1] == 9 and torch.equal(loaded[kernel], padded)
        for part in ("weight", "bias"):  # relation rows, then zeros for the 9x9 and 11x11 kernels, the context row last
            key = f"{block}.graph_conv.weight_linear.{part}"
            relations = upstream[key].shape[0] - 1
            assert torch.equal(loaded[key][:relations], upstream[key][:relations])
            assert not loaded[key][relations:-1].any() and len(loaded[key]) == relations + 3
            assert torch.equal(loaded[key][-1], upstream[key][-1])
    kept = [k for k in loaded if k.startswith("norm") or ".context_layers.1." in k or ".context_layers.2." in k]
    assert len(kept) == 8 + 2 * 12 and all(torch.equal(loaded[k], initial[k]) for k in kept)
    assert "32 backbone tensors keep their initialization" in caplog.text
    assert "norm3.bias" in caplog.text and "stages.3.blocks.1.graph_conv.context_layers.2.0.weight" in caplog.text
    adapted = {"absolute_pos_embed", *(k for k in loaded if ".context_layers.0." in k or ".weight_linear." in k)}
    assert all(torch.equal(loaded[k], upstream[k]) for k in loaded.keys() - adapted - set(kept))


def test_eurnet_converter_drops_the_classifier_and_relative_positions(eurnet_backbone):
    upstream = _eurnet_imagenet_file(eurnet_backbone)
    converted = convert_imagenet_eurnet(upstream, eurnet_backbone)
    assert converted.keys() == eurnet_backbone.state_dict().keys()
    dropped = sorted(upstream.keys() - converted.keys())
    assert dropped == [
        "head.bias",
        "head.weight",
        "norm.bias",
        "norm.weight",
        *(f"stages.{i}.graph_construction_model.edge_layers.1.relative_pos" for i in (1, 2, 3)),
    ]


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda sd: sd.__setitem__("stages.0.blocks.0.graph_conv.extra.weight", torch.ones(1)),
            "1 unexpected: stages.0.blocks.0.graph_conv.extra.weight",
        ),
        (lambda sd: sd.pop("patch_embed.proj.weight"), "1 missing: patch_embed.proj.weight"),
        (
            lambda sd: sd.pop("stages.1.blocks.0.graph_conv.context_layers.0.0.weight"),
            "1 missing: stages.1.blocks.0.graph_conv.context_layers.0.0.weight",
        ),
        (
            lambda sd: sd.__setitem__(
                "stages.0.blocks.0.graph_conv.context_layers.0.0.weight", torch.ones(96, 1, 8, 8)
            ),
            "1 wrong shape: stages.0.blocks.0.graph_conv.context_layers.0.0.weight: checkpoint (96, 1, 8, 8), "
            "model (96, 1, 9, 9)",
        ),
    ],
)
def test_eurnet_file_of_another_layout_still_fails_strictly(eurnet_backbone, edit, message):
    upstream = _eurnet_imagenet_file(eurnet_backbone)
    edit(upstream)
    with pytest.raises(CheckpointMismatchError, match=re.escape(message)):
        load_state_dict_strict(eurnet_backbone, convert_imagenet_eurnet(upstream, eurnet_backbone), "td_eurnet.pth")


def test_imagenet_files_fill_a_mirror_and_get_pinned(models, file_server, monkeypatch, tmp_path):
    from segzoo.cli import main

    weights = _random_like(models[MOGANET].backbone.state_dict())
    torch.save(
        {"state_dict": {**weights, "head.weight": torch.ones(2, 192), "head.bias": torch.ones(2)}},
        file_server.root / "moganet_xtiny.pth.tar",
    )
    source = WeightSource(f"{file_server.url}/moganet_xtiny.pth.tar", "pytorch")
    _serve_as_backbone(monkeypatch, MOGANET, source)
    assert main(["download", MOGANET, "--imagenet", "--to", str(tmp_path / "mirror"), "--quiet"]) == 0
    manifest = json.loads((tmp_path / "mirror" / "manifest.json").read_text())
    (entry,) = manifest.values()
    sha256 = hashlib.sha256((file_server.root / "moganet_xtiny.pth.tar").read_bytes()).hexdigest()
    assert entry["url"] == source.url and entry["sha256"] == sha256
    assert (tmp_path / "mirror" / "moganet_xtiny.pth.tar").read_bytes() == (
        file_server.root / "moganet_xtiny.pth.tar"
    ).read_bytes()

    pins = tmp_path / "pins.json"
    pins.write_text("{}")
    assert main(["pin", MOGANET, "--imagenet", "--pins-file", str(pins), "--quiet"]) == 0
    assert sha256 in pins.read_text() and source.url in pins.read_text()
