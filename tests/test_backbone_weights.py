"""ImageNet backbone files: registry records, fetch through a local server, zip safety, per-family strict loads."""
from __future__ import annotations

import dataclasses
import os
import zipfile
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

import segzoo
from segzoo.families.emanet import convert_imagenet_resnet
from segzoo.families.regproxy import convert_imagenet_vit
from segzoo.weights import CheckpointError, CheckpointMismatchError, WeightsError, load_imagenet_backbone
from segzoo.weights.archive import extracted_checkpoint, safe_members
from segzoo.zoo import WeightSource

MOGANET, RESNET, VIT = "moganet_xt_fpn_ade20k", "emanet_r50_coco", "regproxy_vit_ti16_ade20k"


def _serve_as_backbone(monkeypatch, name: str, source: WeightSource) -> None:
    from segzoo import registry

    info = dataclasses.replace(registry._BY_NAME[name], pretrained_backbone=source)
    monkeypatch.setitem(registry._BY_NAME, name, info)


def _random_like(state_dict: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.rand(v.shape, generator=g) if v.is_floating_point() else v.clone()) for k, v in state_dict.items()}


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
    assert segzoo.model_info("moganet_s_fpn_ade20k").pretrained_backbone == segzoo.model_info(
        "moganet_s_upernet_ade20k").pretrained_backbone


def test_moganet_release_loads_strictly_without_its_classifier(models, file_server, monkeypatch):
    backbone = models[MOGANET].backbone
    weights = _random_like(backbone.state_dict())
    classifier = {"head.weight": torch.randn(1000, 192), "head.bias": torch.randn(1000)}
    # the timm training checkpoint as extract_ckpt.py leaves it (plain data only)
    torch.save({"state_dict": {**weights, **classifier}, "state_dict_ema": weights, "arch": "moganet_xtiny",
                "metric": 76.5, "author": "MogaNet"}, file_server.root / "moganet_xtiny.pth.tar")
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
    _serve_as_backbone(monkeypatch, RESNET, WeightSource(
        f"{file_server.url}/resnet50-25c4b509.zip", "pytorch", kind="archive"))
    model = segzoo.create_model(RESNET)
    load_imagenet_backbone(model, RESNET, progress=False)
    loaded = model.backbone.state_dict()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    assert "fc.weight" not in loaded


def test_resnet_converter_drops_exactly_the_classifier():
    converted = convert_imagenet_resnet({"fc.weight": torch.ones(2, 2), "fc.bias": torch.ones(2),
                                         "bn1.running_mean": torch.ones(2), "extra.w": torch.ones(1)}, None)
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
    deit |= {"head.weight": torch.ones(1000, 192), "head.bias": torch.ones(1000),
             "head_dist.weight": torch.ones(1000, 192), "head_dist.bias": torch.ones(1000)}
    converted = convert_imagenet_vit(deit, backbone)
    assert not any(k.startswith("head") for k in converted)
    assert converted["pos_embed"].shape == backbone.pos_embed.shape
    assert torch.equal(converted["pos_embed"][:, :2], deit["pos_embed"][:, :2])
    backbone.load_state_dict(converted, strict=True)


def test_a_file_of_another_model_is_named_and_removed(models, file_server, monkeypatch, isolated_cache):
    torch.save({"state_dict": {"head.weight": torch.ones(3), "stem.conv.weight": torch.ones(3)}},
               file_server.root / "other.pth")
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
        link.external_attr = (0o120777 << 16)
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
    monkeypatch.setattr("segzoo.weights.archive.MAX_MEMBER_BYTES", 1000)
    with pytest.raises(CheckpointError, match="byte limit"):
        safe_members(path)
    monkeypatch.setattr("segzoo.weights.archive.MAX_MEMBERS", 1)
    with pytest.raises(CheckpointError, match="more than 1 members"):
        safe_members(path)


def test_entries_without_a_loadable_imagenet_file_say_why(monkeypatch):
    info = dataclasses.replace(segzoo.model_info("glore_r50_fcn_cityscapes"), pretrained_backbone=None)
    monkeypatch.setattr("segzoo.weights.imagenet._info", lambda name: info)
    with pytest.raises(WeightsError, match="paper names none"):
        load_imagenet_backbone(torch.nn.Module(), "glore_r50_fcn_cityscapes")


def test_glore_assumes_the_deep_stem_resnets_emanet_names():
    for depth in (50, 101):
        glore = segzoo.model_info(f"glore_r{depth}_fcn_cityscapes")
        assert glore.pretrained_backbone == segzoo.model_info(f"emanet_r{depth}_coco").pretrained_backbone
        assert any("Assumed: training starts from the deep-stem ImageNet ResNets" in n for n in glore.notes)


def test_eurnet_imagenet_files_are_fetched_but_not_converted_yet(file_server, monkeypatch):
    (file_server.root / "td_eurnet.pth").write_bytes(b"")
    torch.save({"model": {"head.weight": torch.ones(2)}}, file_server.root / "td_eurnet.pth")
    name = "eurnet_t_upernet_ade20k"
    _serve_as_backbone(monkeypatch, name, WeightSource(f"{file_server.url}/td_eurnet.pth", "pytorch"))
    model = torch.nn.Module()
    model.backbone = torch.nn.Linear(1, 1)
    with pytest.raises(WeightsError, match="not supported"):
        load_imagenet_backbone(model, name, progress=False)
    assert os.environ.get("SEGZOO_OFFLINE") is None
