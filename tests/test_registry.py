"""Registry API: names, aliases, records, errors."""

import copy
import dataclasses
import pickle
import re
import subprocess
import sys

import pytest
import torch

import segzoo
from segzoo.registry import entries
from segzoo.zoo.catalog import zoo_catalog
from tests.conftest import REPO, SHARED

SIZES = ("xt", "t", "s", "b", "l")
NAMES = [f"moganet_{s}_{h}_ade20k" for h in ("fpn", "upernet") for s in SIZES]
EMANET = [f"emanet_r{d}_{s}" for s in ("coco", "cityscapes") for d in (50, 101, 152)]
GLORE = ["glore_r50_fcn_cityscapes", "glore_r101_fcn_cityscapes"]
EURNET = [f"eurnet_{s}_upernet_ade20k" for s in ("t", "s", "b")]
REGPROXY = [f"regproxy_vit_{s}_{d}" for s in ("ti16", "s16", "b16", "l16") for d in ("ade20k", "cityscapes")] + [
    "regproxy_r26_vit_s32_ade20k",
    "regproxy_r50_vit_l32_ade20k",
]


def test_all_entries_are_registered():
    assert segzoo.list_models() == sorted(NAMES + EMANET + GLORE + EURNET + REGPROXY)
    assert len(segzoo.list_models()) == 31
    assert segzoo.list_models("moganet_*", pretrained=True) == sorted(NAMES)


def test_zoo_catalog_is_the_registrys():
    """``segzoo list`` / ``info`` read the zoo modules' entries (no torch); the registry reads the families': the
    same records, names and aliases."""
    zoo = zoo_catalog()
    assert zoo.by_name == {info.name: info for info in entries()}
    assert zoo.aliases == segzoo.list_aliases()
    assert zoo.names("moganet_s_*") == segzoo.list_models("moganet_s_*")


def test_lazy_package_names():
    """``import segzoo`` loads its public names on first use; unknown names are AttributeErrors."""
    assert all(getattr(segzoo, name) is not None for name in segzoo.__all__)
    assert set(segzoo.__all__) <= set(dir(segzoo))
    assert segzoo.registry.model_info is segzoo.model_info
    with pytest.raises(AttributeError, match="no_such_name"):
        segzoo.no_such_name  # noqa: B018


def test_list_models_fnmatch():
    assert segzoo.list_models("moganet_*_fpn_*") == sorted(n for n in NAMES if "_fpn_" in n)
    assert segzoo.list_models("moganet_s_*") == ["moganet_s_fpn_ade20k", "moganet_s_upernet_ade20k"]
    assert segzoo.list_models("nothing*") == []


def test_alias_without_dataset_resolves():
    assert segzoo.model_info("moganet_s_fpn").name == "moganet_s_fpn_ade20k"
    assert segzoo.list_aliases()["moganet_xt_upernet"] == "moganet_xt_upernet_ade20k"
    assert segzoo.list_aliases()["glore_r50_fcn"] == "glore_r50_fcn_cityscapes"
    assert "emanet_r50" not in segzoo.list_aliases()  # COCO and Cityscapes: ambiguous
    assert all(segzoo.model_info(alias).name == name for alias, name in segzoo.list_aliases().items())


def test_unknown_name_suggests_close_matches():
    with pytest.raises(segzoo.UnknownModelError, match="moganet_s_fpn") as err:
        segzoo.create_model("moganet_s_fnp")
    assert "did you mean" in str(err.value)
    with pytest.raises(segzoo.UnknownModelError, match="list_models"):
        segzoo.model_info("resnet50")


def test_model_info_is_immutable():
    info = segzoo.model_info("moganet_s_upernet_ade20k")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.num_classes = 3
    with pytest.raises(TypeError):
        info.metrics["mIoU"] = 99.0


def test_model_info_pickles_and_a_model_copies_and_saves_whole(tmp_path):
    """EMA copies, ``torch.save(model)`` and worker processes need a model that copies and pickles."""
    for name in segzoo.list_models():
        info = segzoo.model_info(name)
        back = pickle.loads(pickle.dumps(info))
        assert back == info and copy.deepcopy(info) is info
        with pytest.raises(TypeError):
            back.arch_args["x"] = 1  # still read-only
    torch.manual_seed(0)
    model = segzoo.create_model("moganet_xt_fpn_ade20k").eval()
    twin = copy.deepcopy(model)
    assert twin.info is model.info and twin.backbone is not model.backbone
    torch.save(model, tmp_path / "whole.pt")
    loaded = torch.load(tmp_path / "whole.pt", weights_only=False)  # our own file: trusted
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(twin(images), model(images)) and torch.equal(loaded(images), model(images))
    assert loaded.info == model.info


def test_model_info_fields():
    info = segzoo.model_info("moganet_s_upernet_ade20k")
    assert info.family == "moganet"
    assert info.paper.arxiv_id == "2211.03295"
    assert (info.backbone, info.head, info.dataset, info.num_classes) == ("MogaNet-S", "UperNet", "ADE20K", 150)
    assert info.crop_size == (512, 512)
    assert info.normalization.channel_order == "RGB"
    assert dict(info.metrics) == {"mIoU": 49.2, "mAcc": 61.6}
    assert (info.params_m, info.flops_g, info.flops_input_shape) == (55.3, 946.4, (3, 2048, 512))
    (source,) = info.weights
    assert source.format == "mmseg" and source.sha256 is None and source.size is None
    assert source.url.endswith("/upernet_moganet_small_512x512_160k_ade20k.pth")
    assert info.upstream.path == "segmentation/configs/upernet/moganet/upernet_moganet_small_512x512_160k_ade20k.py"
    assert info.license == "Apache-2.0" and "@inproceedings" in info.citation
    assert info.align_corners is False and info.test_pipeline.mode == "whole"


def test_table_quirk_is_recorded_not_bent():
    info = segzoo.model_info("moganet_l_fpn_ade20k")
    assert info.params_m == 86.2 and info.num_params == 86_147_584
    assert round(info.num_params / 1e6, 1) != info.params_m and info.notes


def test_rounded_params_match_table_otherwise():
    for info in entries():
        if not info.notes and info.params_m is not None:
            assert round(info.num_params / 1e6, 1) == info.params_m, info.name


@pytest.mark.skipif(not (SHARED / "seeds").is_dir(), reason="needs ../shared/seeds")
def test_registry_facts_match_the_seed_tables():
    seed = next(p for p in (SHARED / "seeds").iterdir() if "MogaNet" in p.read_text())
    rows = {}
    for line in seed.read_text().splitlines():
        if line.startswith("| Semantic FPN") or line.startswith("| UperNet"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            url = re.search(r"\[model\]\((\S+)\)", cells[-1]).group(1)
            rows[url] = cells
    assert len(rows) == 10
    for info in (e for e in entries() if e.family == "moganet"):
        cells = rows[info.weights[0].url]
        params, flops, iters, miou, macc = cells[3], cells[4], cells[5], cells[6], cells[7]
        assert info.backbone == cells[1]
        assert params == f"{info.params_m}M" and flops == f"{info.flops_g}G"
        assert iters == f"{info.train_iters // 1000}K"
        assert (float(miou), float(macc)) == (info.metrics["mIoU"], info.metrics["mAcc"])
        assert info.upstream.path.endswith(cells[8].split("(")[1].rstrip(")").split("/", 1)[1])


def test_import_has_no_side_effects():
    code = (
        "import socket, torch\n"
        "def refuse(*a, **k): raise AssertionError('network used at import')\n"
        "socket.socket.connect = refuse\n"
        "built = []\n"
        "init = torch.nn.Module.__init__\n"
        "def spy(self, *a, **k): built.append(type(self).__name__); init(self, *a, **k)\n"
        "torch.nn.Module.__init__ = spy\n"
        "import segzoo, hubconf\n"
        "assert not built, built\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.parametrize("num_classes", [0, -3, 2.5, "19", True, [19]])
@pytest.mark.parametrize("pretrained", [False, True])
def test_num_classes_must_be_a_positive_integer(num_classes, pretrained):
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        segzoo.create_model("moganet_xt_fpn_ade20k", num_classes=num_classes, pretrained=pretrained)
