"""Evaluation end to end on tiny ADE20K and Cityscapes folders: metrics, saved predictions, batching, sharding."""

import copy
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

import segzoo
from segzoo.cli import main
from segzoo.datasets.folders import DatasetError, open_dataset
from segzoo.evaluation.runner import evaluate, format_report, shard_indices
from tests.conftest import REPO, save_mmseg_checkpoint, synthetic_state_dict

NAME = "moganet_xt_fpn_ade20k"
SIZES = [(16, 16), (16, 16), (20, 14), (16, 16), (12, 24)]


@pytest.fixture(scope="module")
def ade_root(module_tmp):
    """Small images in the ADEChallengeData2016 layout, labels 0 (other) to 150."""
    root = module_tmp("ade") / "ADEChallengeData2016"
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(SIZES, start=1):
        for sub, suffix, array in (
            ("images", ".jpg", rng.integers(0, 255, (h, w, 3), dtype=np.uint8)),
            ("annotations", ".png", rng.integers(0, 151, (h, w), dtype=np.uint8)),
        ):
            folder = root / sub / "validation"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(folder / f"ADE_val_{i:08d}{suffix}")
    return root


@pytest.fixture(scope="module")
def checkpoint(module_tmp):
    return save_mmseg_checkpoint(module_tmp("ckpt") / "xt.pth", synthetic_state_dict(NAME))


@pytest.fixture(scope="module")
def small_model(checkpoint):
    """The entry's model, testing at a sixteenth of the ADE20K scale to stay quick on a CPU."""
    model = segzoo.create_model(NAME, checkpoint_path=checkpoint)
    model.info = dataclasses.replace(
        model.info, test_pipeline=dataclasses.replace(model.info.test_pipeline, scale=(128, 32))
    )
    return model


def _numpy_miou(predictions, labels, num_classes=150):
    """mIoU as mmseg defines it, from scratch: classes absent from both are left out."""
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    for pred, label in zip(predictions, labels):
        keep = label != 255
        pred, label = pred[keep].astype(int), label[keep].astype(int)
        for c in range(num_classes):
            inter[c] += np.sum((pred == c) & (label == c))
            union[c] += np.sum((pred == c) | (label == c))
    present = union > 0
    return 100 * np.mean(inter[present] / union[present])


def test_metrics_match_a_numpy_recomputation_from_saved_predictions(small_model, ade_root, tmp_path):
    dataset = open_dataset("ADE20K", ade_root)
    result = evaluate(small_model, dataset, save_predictions=tmp_path, progress=False)
    labels = [dataset[i]["label"] for i in range(len(dataset))]
    predictions = [np.asarray(Image.open(tmp_path / f"{dataset[i]['name']}.png")) for i in range(len(dataset))]
    assert [p.shape for p in predictions] == [label.shape for label in labels]
    assert result.metrics["mIoU"] == pytest.approx(_numpy_miou(predictions, labels), abs=1e-9)
    assert result.num_images == 5 and result.reported == {"mIoU": 40.3, "mAcc": 52.4}
    report = format_report(result)
    assert "reported" in report and "wall" in report


def test_batching_and_limit(small_model, ade_root):
    dataset = open_dataset("ADE20K", ade_root)
    one = evaluate(small_model, dataset, progress=False)
    batched = evaluate(small_model, dataset, batch_size=3, progress=False)
    assert batched.metrics["mIoU"] == pytest.approx(one.metrics["mIoU"], abs=1e-6)
    assert evaluate(small_model, dataset, limit=2, progress=False).num_images == 2


def test_shards_cover_every_sample_once():
    shards = [list(shard_indices(11, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))


@pytest.fixture(scope="module")
def square_root(module_tmp, ade_root):
    """Two 16x16 images: the real pipeline makes them 512x512, cheap enough for full CLI runs."""
    root = module_tmp("square") / "ADEChallengeData2016"
    for sub, suffix in (("images", ".jpg"), ("annotations", ".png")):
        (root / sub / "validation").mkdir(parents=True)
        for i in (1, 2):
            name = f"ADE_val_{i:08d}{suffix}"
            (root / sub / "validation" / name).write_bytes((ade_root / sub / "validation" / name).read_bytes())
    return root


def test_cli_eval_and_torchrun_with_two_processes_agree(square_root, checkpoint, tmp_path, capsys):
    single_out, dist_out = tmp_path / "single.json", tmp_path / "dist.json"
    assert (
        main(
            ["eval", NAME, "--data-root", str(square_root), "-c", str(checkpoint), "--out", str(single_out), "--quiet"]
        )
        == 0
    )
    assert "measured" in capsys.readouterr().out
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "segzoo.cli",
            "eval",
            NAME,
            "--data-root",
            str(square_root),
            "-c",
            str(checkpoint),
            "--out",
            str(dist_out),
            "--quiet",
        ],
        check=True,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        timeout=300,
    )
    single, distributed = json.loads(single_out.read_text()), json.loads(dist_out.read_text())
    assert single["settings"]["world_size"] == 1 and distributed["settings"]["world_size"] == 2
    assert distributed["measured"] == single["measured"] and distributed["per_class"] == single["per_class"]


def test_eval_of_a_missing_dataset_says_what_it_expected(tmp_path, checkpoint, capsys):
    assert main(["eval", NAME, "--data-root", str(tmp_path), "-c", str(checkpoint)]) == 1
    err = capsys.readouterr().err
    assert "ADEChallengeData2016" in err and str(tmp_path) in err


# --- Cityscapes: the official cityscapesScripts evaluation --------------------------------------

CITY_H, CITY_W = 64, 96
CITY_FRAMES = {"frankfurt": ["000000_000294", "000001_000538"], "lindau": ["000000_000019"]}
# Label ids painted in blocks: evaluated stuff and things, an instance class that is not
# evaluated (caravan), and ignored labels (unlabeled, static, parking).
CITY_LABEL_IDS = [7, 8, 11, 21, 23, 24, 25, 26, 27, 28, 32, 33, 29, 0, 4, 9]
GLORE_LIKE_REPORTED = {"IoU class": 78.4, "iIoU class": 56.9, "IoU category": 90.5, "iIoU category": 79.3}


def _train_id_lut():
    from cityscapesscripts.helpers.labels import labels

    lut = np.full(256, 255, dtype=np.uint8)
    for label in labels:
        if 0 <= label.id < 256 and 0 <= label.trainId < 255:
            lut[label.id] = label.trainId
    return lut


def make_official_cityscapes(root, seed=0):
    """Images, labelIds, labelTrainIds and instanceIds in the official layout (16x16 blocks).

    Each block is one label; blocks of classes with instances are one instance each
    (id label * 1000 + k) unless "crowd" (the label id alone). The image's red channel
    paints the train id the stand-in model reads back, wrong on part of some blocks.
    """
    rng = np.random.default_rng(seed)
    lut = _train_id_lut()
    from cityscapesscripts.helpers.labels import id2label

    for city, frames in CITY_FRAMES.items():
        for frame in frames:
            stem = f"{city}_{frame}"
            label_ids = np.zeros((CITY_H, CITY_W), dtype=np.uint8)
            instance_ids = np.zeros((CITY_H, CITY_W), dtype=np.uint16)
            painted = np.zeros((CITY_H, CITY_W), dtype=np.int64)
            for k, (y, x) in enumerate((y, x) for y in range(0, CITY_H, 16) for x in range(0, CITY_W, 16)):
                label_id = int(rng.choice(CITY_LABEL_IDS))
                block = (slice(y, y + 16), slice(x, x + 16))
                label_ids[block] = label_id
                crowd = rng.random() < 0.2
                instance_ids[block] = label_id * 1000 + k if id2label[label_id].hasInstances and not crowd else label_id
                train_id = lut[label_id]
                painted[block] = train_id if train_id != 255 else rng.integers(19)
                if rng.random() < 0.4:  # the model gets part of this block wrong
                    painted[y : y + int(rng.integers(4, 16)), x : x + 8] = rng.integers(19)
            image = rng.integers(0, 256, (CITY_H, CITY_W, 3), dtype=np.uint8)
            image[..., 0] = 12 * painted + 6
            for folder, suffix, array in (
                ("leftImg8bit", "leftImg8bit", image),
                ("gtFine", "gtFine_labelIds", label_ids),
                ("gtFine", "gtFine_labelTrainIds", lut[label_ids]),
                ("gtFine", "gtFine_instanceIds", instance_ids),
            ):
                path = root / folder / "val" / city / f"{stem}_{suffix}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path)
    return root


class RedChannelModel(torch.nn.Module):
    """A stand-in segmentor: class c wherever the red channel is nearest 12 c + 6."""

    align_corners = False

    def __init__(self, info):
        super().__init__()
        self.info = info
        self.num_classes = info.num_classes
        self.sharpness = torch.nn.Parameter(torch.ones(()))

    def require_info(self):
        return self.info

    def forward(self, images):
        norm = self.info.normalization
        red = images[:, :1] * norm.std[0] + norm.mean[0]
        centers = (12 * torch.arange(self.num_classes, device=images.device) + 6).view(1, -1, 1, 1)
        return -self.sharpness * (red - centers).abs()


def cityscapes_info(**changes):
    """A MogaNet entry turned into a Cityscapes one scored by the official evaluation, like GloRe's."""
    info = segzoo.model_info(NAME)
    return dataclasses.replace(
        info,
        name="synthetic_cityscapes",
        dataset="Cityscapes",
        num_classes=19,
        evaluator="cityscapes",
        metrics_split="test",
        reported_metrics=tuple(
            dataclasses.replace(m, value=GLORE_LIKE_REPORTED[m.label])
            for m in segzoo.model_info("glore_r50_fcn_cityscapes").reported_metrics
        ),
        test_pipeline=dataclasses.replace(info.test_pipeline, scale=(CITY_W, CITY_H)),
        **changes,
    )


@pytest.fixture(scope="module")
def cityscapes_root(module_tmp):
    pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    return make_official_cityscapes(module_tmp("cityscapes"))


def official_scores_from_files(prediction_dir, root):
    """The four scores as cityscapesScripts' own loop computes them over labelIds prediction files."""
    from segzoo.evaluation.cityscapes import _official

    official = _official()
    args = copy.copy(official.args)
    args.quiet, args.JSONOutput, args.colorized = True, False, False
    ground_truth = sorted(str(p) for p in (root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    predictions = [str(prediction_dir / Path(gt).name.replace("gtFine_labelIds", "pred")) for gt in ground_truth]
    return official.evaluateImgLists(predictions, ground_truth, args)


def test_cityscapes_scores_equal_the_official_script_on_the_same_files(cityscapes_root, tmp_path):
    from cityscapesscripts.helpers.labels import trainId2label

    dataset = open_dataset("Cityscapes", cityscapes_root)
    model = RedChannelModel(cityscapes_info())
    result = evaluate(model, dataset, save_predictions=tmp_path / "train_ids", progress=False)

    # The saved trainId maps, turned into labelIds files and scored by the official script's loop.
    to_label_id = np.array([trainId2label[t].id for t in range(19)], dtype=np.uint8)
    for png in (tmp_path / "train_ids").glob("*.png"):
        train_ids = np.asarray(Image.open(png))
        Image.fromarray(to_label_id[train_ids]).save(tmp_path / f"{png.stem}_pred.png")
    expected = official_scores_from_files(tmp_path, cityscapes_root)

    measured = result.scalars
    assert list(measured) == ["IoU class", "iIoU class", "IoU category", "iIoU category"]
    for name, key in [
        ("IoU class", "averageScoreClasses"),
        ("iIoU class", "averageScoreInstClasses"),
        ("IoU category", "averageScoreCategories"),
        ("iIoU category", "averageScoreInstCategories"),
    ]:
        assert measured[name] == pytest.approx(100 * expected[key], abs=1e-9), name
        assert 5 < measured[name] < 99  # a real mix of hits and misses, not a degenerate case
    names = [trainId2label[t].name for t in range(19)]
    np.testing.assert_allclose(result.metrics["IoU"], [100 * expected["classScores"][n] for n in names])
    np.testing.assert_allclose(result.metrics["iIoU"], [100 * expected["classInstScores"][n] for n in names])
    assert math.isnan(result.metrics["iIoU"][0]) and not math.isnan(result.metrics["iIoU"][11])  # road, person

    report = format_report(result)
    assert "reported numbers are from the test split" in report and "measured ones from val" in report
    assert "iIoU category" in report and "78.4" in report
    assert ["class", "IoU", "iIoU"] in [line.split() for line in report.splitlines()]
    as_dict = result.to_dict()
    assert as_dict["split"] == "val" and as_dict["reported_split"] == "test"
    assert as_dict["reported"] == GLORE_LIKE_REPORTED and as_dict["measured"] == measured
    assert as_dict["per_class"][11]["class"] == "person" and set(as_dict["per_class"][11]) == {"class", "IoU", "iIoU"}


def test_cityscapes_evaluation_needs_the_instance_ids(cityscapes_root, tmp_path):
    import shutil

    root = tmp_path / "cityscapes"
    shutil.copytree(cityscapes_root, root)
    missing = root / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_instanceIds.png"
    missing.unlink()
    model = RedChannelModel(cityscapes_info())
    model.forward = None  # fails before running the model
    with pytest.raises(DatasetError, match="gtFine_trainvaltest.zip") as err:
        evaluate(model, open_dataset("Cityscapes", root), progress=False)
    assert "1 of 3" in str(err.value) and str(missing) in str(err.value)


def test_cityscapes_evaluation_needs_cityscapesscripts(cityscapes_root, monkeypatch):
    monkeypatch.setitem(sys.modules, "cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling", None)
    with pytest.raises(ImportError, match=r'pip install "segzoo\[cityscapes\]"'):
        evaluate(RedChannelModel(cityscapes_info()), open_dataset("Cityscapes", cityscapes_root), progress=False)


def test_in1d_stand_in_matches_the_removed_numpy_function():
    from segzoo.evaluation.cityscapes import _NumpyWithIn1d

    values = np.array([[7, 24, 26], [33, 0, 26]], dtype=np.uint8)
    assert _NumpyWithIn1d.in1d(values, [24, 26]).tolist() == [False, True, True, False, False, True]
    assert _NumpyWithIn1d.in1d(values, [24, 26], invert=True).tolist() == [True, False, False, True, True, False]
    assert _NumpyWithIn1d().uint8 is np.uint8


def _cityscapes_shard_worker(rank, world_size, root, out):
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world_size)
    try:
        result = evaluate(RedChannelModel(cityscapes_info()), open_dataset("Cityscapes", root), progress=False)
        if rank == 0:
            Path(out, "sharded.json").write_text(json.dumps(result.to_dict()))
    finally:
        dist.destroy_process_group()


def test_cityscapes_evaluation_sums_shards_under_torch_distributed(cityscapes_root, tmp_path):
    single = evaluate(
        RedChannelModel(cityscapes_info()), open_dataset("Cityscapes", cityscapes_root), progress=False
    ).to_dict()
    mp.spawn(_cityscapes_shard_worker, args=(2, cityscapes_root, str(tmp_path)), nprocs=2, join=True)
    sharded = json.loads((tmp_path / "sharded.json").read_text())
    assert sharded["settings"]["world_size"] == 2
    # Instance statistics are float sums, added in another order across processes.
    assert sharded["measured"] == pytest.approx(single["measured"], rel=1e-12)
    for a, b in zip(sharded["per_class"], single["per_class"]):
        assert a["class"] == b["class"]
        np.testing.assert_allclose([a["IoU"], a["iIoU"]], [b["IoU"], b["iIoU"]], rtol=1e-12)


def test_fine_tuned_model_is_evaluated_on_a_custom_dataset(checkpoint, tmp_path, capsys):
    rng = np.random.default_rng(0)
    (tmp_path / "images" / "val").mkdir(parents=True)
    (tmp_path / "labels" / "val").mkdir(parents=True)
    for stem in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(tmp_path / "images/val" / f"{stem}.png")
        Image.fromarray(rng.choice(np.array([0, 1, 2, 255], np.uint8), (64, 80))).save(
            tmp_path / "labels/val" / f"{stem}.png"
        )
    fine_tuned = synthetic_state_dict(NAME)
    for key in ("decode_head.conv_seg.weight", "decode_head.conv_seg.bias"):
        fine_tuned[key] = torch.randn(3, *fine_tuned[key].shape[1:])
    path = save_mmseg_checkpoint(tmp_path / "fine_tuned.pth", fine_tuned)
    out = tmp_path / "result.json"
    assert (
        main(
            [
                "eval",
                NAME,
                "--data",
                f"custom:{tmp_path}",
                "--num-classes",
                "3",
                "--checkpoint",
                str(path),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["dataset"] == "custom" and result["settings"]["evaluator"] == "mmseg"
    assert result["reported"] == {} and 0 <= result["measured"]["mIoU"] <= 100
    assert "class_2" in capsys.readouterr().out


def test_dataset_specific_evaluation_falls_back_on_other_data():
    from segzoo.evaluation.runner import evaluator_for

    custom = dataclasses.make_dataclass("Folder", ["dataset"])("custom")
    assert evaluator_for(segzoo.model_info("glore_r50_fcn_cityscapes"), custom) == "mmseg"
    assert evaluator_for(segzoo.model_info("emanet_r50_coco"), custom) == "detectron2_2019"


def test_a_label_value_outside_the_classes_names_the_file_and_the_value_it_stores(checkpoint, module_tmp, capsys):
    root = module_tmp("bad_label") / "ADEChallengeData2016"
    for sub in ("images", "annotations"):
        (root / sub / "validation").mkdir(parents=True)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "images/validation/ADE_val_1.jpg")
    label = rng.integers(0, 151, (16, 16), dtype=np.uint8)
    label[3, 4], label[5, 6] = 200, 255  # 255 is ignored; 200 is no class (199 after reduce_zero_label)
    label_path = root / "annotations/validation/ADE_val_1.png"
    Image.fromarray(label).save(label_path)
    with pytest.raises(DatasetError, match=f"label {label_path} has class index 200, but the dataset has 150 classes"):
        open_dataset("ADE20K", root)[0]
    assert main(["eval", NAME, "--data-root", str(root), "-c", str(checkpoint), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"segzoo: error: label {label_path} has class index 200,") and err.count("\n") == 1
    assert "ADE20K labels hold 1..150 for its 150 classes, 0 and 255 for ignored pixels" in err


def test_eval_refuses_a_classifier_it_would_have_to_initialize_randomly(checkpoint, tmp_path, capsys):
    (tmp_path / "images" / "val").mkdir(parents=True)
    (tmp_path / "labels" / "val").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(tmp_path / "images/val/a.png")
    Image.new("L", (64, 64)).save(tmp_path / "labels/val/a.png")
    argv = ["eval", NAME, "--data", f"custom:{tmp_path}", "--num-classes", "3", "-c", str(checkpoint), "-q"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err == (
        f"segzoo: error: --num-classes 3: the classifier in {checkpoint} is for another number of classes, so eval "
        "would score a randomly initialized one; pass --checkpoint with the model fine-tuned for 3 classes\n"
    )


def test_cli_eval_records_the_precision(square_root, checkpoint, tmp_path, monkeypatch):
    from segzoo import optimize

    monkeypatch.setattr(optimize, "cpu_computes_bf16", lambda: True)
    outs = {p: tmp_path / f"{p}.json" for p in ("fp32", "bf16")}
    for precision, out in outs.items():
        argv = ["eval", NAME, "--data-root", str(square_root), "-c", str(checkpoint), "--limit", "1", "--quiet"]
        assert main([*argv, "--precision", precision, "--out", str(out)]) == 0
    results = {p: json.loads(out.read_text()) for p, out in outs.items()}
    assert results["fp32"]["settings"]["precision"] == "fp32" and results["bf16"]["settings"]["precision"] == "bf16"
    assert 0 <= results["bf16"]["measured"]["mIoU"] <= 100


def test_evaluation_at_batch_1_replays_cuda_graphs_by_default_and_counts_the_same(small_model, ade_root, monkeypatch):
    from segzoo.inference import graphs
    from tests.test_cuda_graphs import StandInCapture

    capture = StandInCapture()
    monkeypatch.setattr(graphs, "GRAPH_DEVICES", ("cuda", "cpu"))  # the CPU stands in for a GPU
    monkeypatch.setattr(graphs, "capture", capture)
    dataset = open_dataset("ADE20K", ade_root)
    eager = evaluate(small_model, dataset, progress=False, cuda_graphs=False)
    assert capture.captured == [] and eager.settings["cuda_graphs"] is False
    graphed = evaluate(small_model, dataset, progress=False)
    assert graphed.settings["cuda_graphs"] is True and capture.replays > 0
    assert graphed.metrics == eager.metrics
    assert evaluate(small_model, dataset, batch_size=2, progress=False).settings["cuda_graphs"] is False
