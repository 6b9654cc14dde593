"""RegionProxy: exact sizes, original checkpoints, the timm-built ViT's upstream quirks, the proxy head, goldens."""

import json
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import segzoo
from segzoo.backbones import ViT
from segzoo.families.regproxy import convert_mmseg_regproxy
from segzoo.heads import ProxyHead
from tests.conftest import SHARED, save_mmseg_checkpoint, synthetic_state_dict

NAMES = segzoo.list_models("regproxy_*")
GOLDEN = SHARED / "golden" / "regproxy"
SMALL = ("regproxy_vit_ti16_ade20k", "regproxy_r26_vit_s32_ade20k")  # goldens in the default suite


def _golden(name: str) -> dict | None:
    path = GOLDEN / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def test_the_ten_models_of_the_seed_tables():
    sizes = ("ti16", "s16", "b16", "l16")
    expected = [f"regproxy_vit_{s}_{d}" for s in sizes for d in ("ade20k", "cityscapes")]
    expected += ["regproxy_r26_vit_s32_ade20k", "regproxy_r50_vit_l32_ade20k"]
    assert NAMES == sorted(expected)


@pytest.mark.skipif(not (SHARED / "seeds").is_dir(), reason="needs ../shared/seeds")
def test_registry_facts_match_the_seed_tables():
    seed = next(p for p in (SHARED / "seeds").iterdir() if "Early Region Proxy" in p.read_text())
    rows = {}
    for line in seed.read_text().splitlines():
        found = re.search(r"\[\[model\]\]\((\S+)\)", line)
        if found:
            rows[found.group(1)] = [c.strip() for c in line.strip().strip("|").split("|")]
    assert len(rows) == 10
    for name in NAMES:
        info = segzoo.model_info(name)
        cells = rows[info.weights[0].url]
        assert cells[0] == info.backbone
        assert cells[2] == ("-" if info.flops_g is None else f"{info.flops_g}G")
        assert cells[3] == f"{info.params_m}M"
        assert (float(cells[4]), float(cells[5])) == (info.metrics["mIoU"], info.metrics["mIoU (ms+flip)"])
        if info.dataset == "ADE20K":
            assert float(cells[6]) == info.reported_costs["FPS"]
        if name != "regproxy_r50_vit_l32_ade20k":  # its table row says 512x512; the config crops 640 (notes)
            assert cells[1] == "x".join(map(str, info.crop_size))


@pytest.mark.skipif(not GOLDEN.is_dir(), reason="needs ../shared/golden")
@pytest.mark.parametrize("name", NAMES)
def test_entries_follow_the_upstream_configs(name):
    info, golden = segzoo.model_info(name), _golden(name)
    backbone, pipeline = golden["backbone"], info.test_pipeline
    assert info.upstream.path == golden["upstream"]["config"] and info.upstream.commit == golden["upstream"]["commit"]
    assert info.num_classes == golden["num_classes"] and list(info.crop_size) == backbone["img_size"]
    assert list(info.arch_args["out_indices"]) == backbone["out_indices"]
    assert info.arch_args.get("distilled", False) == backbone["deit"]
    assert (pipeline.mode, pipeline.slide_windows) == ("slide", "pad")
    test_cfg = golden["test_cfg"]
    assert [list(pipeline.crop_size), list(pipeline.stride)] == [test_cfg["crop_size"], test_cfg["stride"]]
    assert list(pipeline.scale) == golden["test_pipeline"]["img_scale"]
    assert info.params_m == golden["table_params_m"] and info.flops_g == golden["table_flops_g"]


def test_converter_is_pure_and_leaves_segzoo_layout_unchanged():
    original = synthetic_state_dict("regproxy_r26_vit_s32_ade20k")
    keys_before = list(original)
    converted = convert_mmseg_regproxy(original)
    assert list(original) == keys_before
    assert "decode_head.conv_seg.weight" in converted and "backbone.blocks.11.attn.qkv.weight" in converted
    again = convert_mmseg_regproxy(converted)
    assert list(again) == list(converted) and all(again[k] is converted[k] for k in converted)


@pytest.mark.parametrize("name", ["regproxy_vit_ti16_cityscapes", "regproxy_r26_vit_s32_ade20k"])
def test_original_checkpoint_loads_strictly(tmp_path, name):
    upstream = synthetic_state_dict(name)
    model = segzoo.create_model(name, checkpoint_path=save_mmseg_checkpoint(tmp_path / f"{name}.pth", upstream))
    loaded = model.state_dict()
    qkv = upstream["backbone.layers.3.attn.attn.in_proj_weight"]
    assert torch.equal(loaded["backbone.blocks.3.attn.qkv.weight"], qkv)
    assert torch.equal(loaded["decode_head.conv_seg.weight"].flatten(1), upstream["decode_head.mlp.0.0.weight"])
    for key, value in convert_mmseg_regproxy(upstream).items():
        assert torch.equal(loaded[key], value), key
    x = torch.randn(1, 3, 65, 97)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, model.num_classes, 65, 97) and torch.isfinite(out).all()
    model.train()
    model(x)["out"].logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.decode_head.parameters())


def test_other_num_classes_reinitializes_only_the_token_classifier(tmp_path):
    name = "regproxy_vit_ti16_ade20k"
    path = save_mmseg_checkpoint(tmp_path / f"{name}.pth", synthetic_state_dict(name))
    with pytest.warns(UserWarning, match="decode_head.conv_seg"):
        model = segzoo.create_model(name, num_classes=5, checkpoint_path=path)
    assert model.num_classes == 5 and model.classifier_names() == ["decode_head.conv_seg"]


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(0)
    return ViT("ti16", img_size=(64, 64), out_indices=(-1, 5, 11)).eval()


def test_fused_and_math_attention_agree(tiny_vit):
    x = torch.randn(2, 3, 50, 70)  # not a multiple of the patch size
    with torch.no_grad():
        fused = tiny_vit(x)
        tiny_vit.set_fused_attn(False)
        try:
            math = tiny_vit(x)
        finally:
            tiny_vit.set_fused_attn(True)
    for a, b in zip(fused, math):
        assert ((a - b).norm() / b.norm()).item() < 1e-5


def test_input_is_zero_padded_to_a_multiple_of_the_patch_size(tiny_vit):
    x = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        for a, b in zip(tiny_vit(x), tiny_vit(F.pad(x, (0, 10, 0, 14)))):
            torch.testing.assert_close(a, b)


def test_position_embedding_is_resized_only_when_the_token_count_changes(tiny_vit):
    pos = tiny_vit.pos_embed[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)  # trained grid: 4x4 tokens
    with torch.no_grad():
        for size, grid in (((32, 128), (2, 8)), ((48, 80), (3, 5))):
            x = torch.randn(1, 3, *size)
            patches = tiny_vit.patch_embed(x).permute(0, 3, 1, 2)
            if grid[0] * grid[1] == 16:  # upstream's quirk: same count, other shape -> the 4x4 grid read row-major
                expected = patches + pos.flatten(2).unflatten(2, grid)
            else:
                expected = patches + F.interpolate(pos, size=grid, mode="bicubic", align_corners=False)
            torch.testing.assert_close(tiny_vit(x)[0], expected)


def test_only_the_last_block_output_is_normalized(tiny_vit):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        embedded, middle, last = tiny_vit(x)
        cls = tiny_vit.cls_token + tiny_vit.pos_embed[:, :1]
        tokens = torch.cat([cls, embedded.flatten(2).transpose(1, 2)], dim=1)
        for i, block in enumerate(tiny_vit.blocks):
            tokens = block(tokens)
            if i == 5:
                torch.testing.assert_close(tokens[:, 1:], middle.flatten(2).transpose(1, 2))
        torch.testing.assert_close(tiny_vit.norm(tokens)[:, 1:], last.flatten(2).transpose(1, 2))


def _proxy_reference(head: ProxyHead, middle: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """The region-proxy decoding pixel by pixel, skipping neighbours outside the image."""
    n, _, h, w = last.shape
    rh, rw = head.region_res
    affinity = head.affinity_head(middle).view(n, 3, 3, rh, rw, h, w)
    token_logits = head.conv_seg(last)
    out = torch.zeros(n, token_logits.shape[1], h * rh, w * rw)
    for y in range(h):
        for x in range(w):
            inside = [(dy, dx) for dy in range(3) for dx in range(3) if 0 <= y + dy - 1 < h and 0 <= x + dx - 1 < w]
            for i in range(rh):
                for j in range(rw):
                    weights = torch.stack([affinity[:, dy, dx, i, j, y, x] for dy, dx in inside], 1).softmax(1)
                    neighbours = torch.stack([token_logits[:, :, y + dy - 1, x + dx - 1] for dy, dx in inside], 1)
                    out[:, :, y * rh + i, x * rw + j] = (weights[:, :, None] * neighbours).sum(1)
    return out


def test_proxy_head_matches_the_pixelwise_definition():
    torch.manual_seed(0)
    head = ProxyHead(8, 6, num_classes=3, region_res=(2, 3))
    for module in head.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    head.eval()
    middle, last = torch.randn(2, 8, 3, 4), torch.randn(2, 8, 3, 4)
    with torch.no_grad():
        out = head([last, middle, last])
        torch.testing.assert_close(out, _proxy_reference(head, middle, last))
    assert out.shape == (2, 3, 6, 12)


GOLDEN_CASES = [pytest.param(name, marks=() if name in SMALL else pytest.mark.slow) for name in NAMES]


@pytest.mark.skipif(not (SHARED / "golden" / "check.py").is_file(), reason="needs ../shared/golden")
@pytest.mark.parametrize("name", GOLDEN_CASES)
def test_golden_case_matches_upstream(name):
    result = subprocess.run(
        [sys.executable, str(SHARED / "golden" / "check.py"), "--family", "regproxy", "--entry", name],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1/1 cases match upstream" in result.stdout
