"""Evaluation end to end on a tiny ADE20K folder: metrics, saved predictions, batching, torchrun sharding."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import segzoo
from segzoo.cli import main
from segzoo.datasets.folders import open_dataset
from segzoo.evaluation.runner import evaluate, format_report, shard_indices
from tests.conftest import REPO, save_mmseg_checkpoint, synthetic_state_dict

NAME = "moganet_xt_fpn_ade20k"
SIZES = [(16, 16), (16, 16), (20, 14), (16, 16), (12, 24)]


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory):
    """Small images in the ADEChallengeData2016 layout, labels 0 (other) to 150."""
    root = tmp_path_factory.mktemp("ade") / "ADEChallengeData2016"
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
def checkpoint(tmp_path_factory):
    return save_mmseg_checkpoint(tmp_path_factory.mktemp("ckpt") / "xt.pth", synthetic_state_dict(NAME))


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
    assert [p.shape for p in predictions] == [l.shape for l in labels]
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
def square_root(tmp_path_factory, ade_root):
    """Two 16x16 images: the real pipeline makes them 512x512, cheap enough for full CLI runs."""
    root = tmp_path_factory.mktemp("square") / "ADEChallengeData2016"
    for sub, suffix in (("images", ".jpg"), ("annotations", ".png")):
        (root / sub / "validation").mkdir(parents=True)
        for i in (1, 2):
            name = f"ADE_val_{i:08d}{suffix}"
            (root / sub / "validation" / name).write_bytes((ade_root / sub / "validation" / name).read_bytes())
    return root


def test_cli_eval_and_torchrun_with_two_processes_agree(square_root, checkpoint, tmp_path, capsys):
    single_out, dist_out = tmp_path / "single.json", tmp_path / "dist.json"
    assert main(["eval", NAME, "--data-root", str(square_root), "-c", str(checkpoint),
                 "--out", str(single_out), "--quiet"]) == 0
    assert "measured" in capsys.readouterr().out
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "segzoo.cli", "eval", NAME, "--data-root", str(square_root), "-c", str(checkpoint),
         "--out", str(dist_out), "--quiet"],
        check=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, timeout=300,
    )
    single, distributed = json.loads(single_out.read_text()), json.loads(dist_out.read_text())
    assert single["settings"]["world_size"] == 1 and distributed["settings"]["world_size"] == 2
    assert distributed["measured"] == single["measured"] and distributed["per_class"] == single["per_class"]


def test_eval_of_a_missing_dataset_says_what_it_expected(tmp_path, checkpoint, capsys):
    assert main(["eval", NAME, "--data-root", str(tmp_path), "-c", str(checkpoint)]) == 1
    err = capsys.readouterr().err
    assert "ADEChallengeData2016" in err and str(tmp_path) in err
