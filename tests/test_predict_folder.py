"""``segzoo.predict_folder`` and ``segzoo predict`` on folders: recursion, read-ahead, shards, resume, outputs."""

import csv
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segzoo
from segzoo.cli import main
from segzoo.inference import predict_prepared, prepare_image
from segzoo.jobs import AREA_COLUMNS, plan_tasks
from segzoo.jobs.outputs import write_atomically
from tests.conftest import REPO, save_mmseg_checkpoint, synthetic_state_dict

NAME = "moganet_xt_fpn_ade20k"
NESTED = ["a.jpg", "sub/b.png", "sub/deeper/c.jpg", "sub/deeper/d.png", "e.png"]


@pytest.fixture(scope="module")
def small_model():
    """MogaNet-XT FPN with random weights and a 32x64 test size (the real 512x2048 is slow on a CPU)."""
    model = segzoo.create_model(NAME, pretrained=False)
    small = dataclasses.replace(model.info.test_pipeline, scale=(64, 32))
    model.info = dataclasses.replace(model.info, test_pipeline=small)
    return model.eval()


def photos(root: Path, names=NESTED) -> Path:
    """Small random photos at ``names`` under ``root``, and a file that is no image."""
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8)).save(root / name)
    (root / "notes.txt").write_text("not an image")
    return root


def labels_of(name: str) -> str:
    path = Path(name)
    return str(path.parent / f"{path.stem}_{NAME}_labels.png")


def written(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def test_folders_are_walked_recursively_and_mirrored(small_model, tmp_path):
    folder, out = photos(tmp_path / "photos"), tmp_path / "out"
    result = segzoo.predict_folder(small_model, folder, out, workers=2, progress=False)
    assert written(out) == sorted(labels_of(name) for name in NESTED)
    assert (result.done, result.skipped, result.failed, result.processes) == (5, 0, 0, 1)
    with Image.open(out / labels_of("sub/deeper/c.jpg")) as labels:
        assert labels.mode == "P" and labels.size == (40, 32)
    flat = tmp_path / "flat"
    segzoo.predict_folder(small_model, folder, flat, recursive=False, workers=0, output="overlay", progress=False)
    assert written(flat) == [f"a_{NAME}.png", f"e_{NAME}.png"]


def test_an_output_folder_inside_the_input_is_not_read_back(small_model, tmp_path):
    folder = photos(tmp_path / "photos", ["a.png"])
    for _ in range(2):
        assert segzoo.predict_folder(small_model, folder, folder / "out", workers=0).done == 1
    assert written(folder / "out") == [labels_of("a.png")]


def test_read_ahead_gives_the_labels_predict_gives(small_model, tmp_path):
    image = np.random.default_rng(1).integers(0, 255, (45, 70, 3), dtype=np.uint8)
    expected = segzoo.predict(small_model, image, return_scores=True)
    ahead = predict_prepared(small_model, prepare_image(image, small_model.info), return_scores=True)
    assert np.array_equal(ahead.labels, expected.labels) and torch.equal(ahead.scores, expected.scores)


def test_simulated_shards_are_disjoint_and_complete(small_model, tmp_path, monkeypatch):
    folder, out = photos(tmp_path / "photos"), tmp_path / "out"
    shards = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        mine = []
        summary = segzoo.predict_folder(small_model, folder, out, workers=0, on_written=mine.append)
        assert summary.processes == 3 and not summary.combined and summary.done == len(mine)
        shards.append({str(task.source.relative_to(folder)) for task in mine})
    assert [len(s) for s in shards] == [2, 2, 1]
    assert set.union(*shards) == set(NESTED) and sum(map(len, shards)) == len(NESTED)
    assert written(out) == sorted(labels_of(name) for name in NESTED)
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(ValueError, match="RANK=3 and WORLD_SIZE=3"):
        segzoo.predict_folder(small_model, folder, out)


def test_skip_existing_touches_only_missing_outputs(small_model, tmp_path):
    folder, out = photos(tmp_path / "photos"), tmp_path / "out"
    segzoo.predict_folder(small_model, folder, out, workers=0)
    (out / labels_of("sub/b.png")).unlink()
    (out / "sub" / f".{Path(labels_of('b.png')).name}.x.part").write_bytes(b"half a png")  # left by a killed job
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*_labels.png")}
    seen = []
    result = segzoo.predict_folder(small_model, folder, out, workers=0, skip_existing=True, on_written=seen.append)
    assert (result.done, result.skipped) == (1, 4) and [t.source for t in seen] == [folder / "sub/b.png"]
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in before.items())
    assert (out / labels_of("sub/b.png")).is_file()


def test_atomic_write_leaves_the_old_file_or_nothing(tmp_path):
    target = tmp_path / "x.png"

    def dies_halfway(file):
        file.write(b"half")
        raise OSError("disk full")

    for existing in (None, b"old"):
        if existing:
            target.write_bytes(existing)
        with pytest.raises(OSError, match="disk full"):
            write_atomically(target, dies_halfway)
        assert [p.name for p in tmp_path.iterdir()] == (["x.png"] if existing else [])
        assert not existing or target.read_bytes() == existing


def test_a_bad_image_is_reported_and_the_others_written(small_model, tmp_path, monkeypatch):
    folder, out = photos(tmp_path / "photos", ["a.png", "c.png"]), tmp_path / "out"
    (folder / "b.jpg").write_bytes(b"not a jpeg")
    Image.new("RGB", (300, 300)).save(folder / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # 300x300 is over twice the limit: a decompression bomb
    failures = []
    result = segzoo.predict_folder(small_model, folder, out, workers=0, on_error=failures.append)
    assert (result.done, result.failed) == (2, 2)
    reasons = {f.source.name: f.reason for f in failures}
    assert reasons["b.jpg"].startswith("not an image (") and "too large" in reasons["huge.png"]
    assert written(out) == [labels_of("a.png"), labels_of("c.png")]


def test_scores_and_area_table(small_model, tmp_path):
    folder, out, table = photos(tmp_path / "photos", ["a.png", "sub/b.png"]), tmp_path / "out", tmp_path / "areas.csv"
    segzoo.predict_folder(small_model, folder, out, workers=0, save_scores=True, summary=table)
    rows = list(csv.reader(table.open()))
    assert tuple(rows[0]) == AREA_COLUMNS
    names = segzoo.datasets.dataset_metadata("ADE20K")[0]
    for name in ("a.png", "sub/b.png"):
        labels = np.asarray(Image.open(out / labels_of(name)))
        with np.load(out / name.replace(".png", f"_{NAME}_scores.npz"), allow_pickle=False) as scores:
            probs = scores["probabilities"]
            assert probs.dtype == np.float16 and probs.shape == (150, *labels.shape)
            assert np.allclose(probs.astype(np.float32).sum(0), 1, atol=0.02)
            top = np.take_along_axis(probs, labels[None].astype(np.int64), 0)[0]
            assert np.array_equal(top, probs.max(0))  # the label's class is the likeliest (float16 may tie)
            assert list(scores["classes"]) == [n.strip() for n in names]
        mine = [row for row in rows[1:] if row[0] == str(folder / name)]
        counts = np.bincount(labels.ravel(), minlength=150)
        assert [(int(r[3]), r[4], int(r[5])) for r in mine] == [
            (c, names[c].strip(), counts[c]) for c in np.flatnonzero(counts)
        ]
        assert sum(float(r[6]) for r in mine) == pytest.approx(1, abs=1e-4)
    table.unlink()  # the table of a resumed job reads the skipped images' areas back from their labels
    segzoo.predict_folder(small_model, folder, out, workers=0, save_scores=True, summary=table, skip_existing=True)
    assert list(csv.reader(table.open())) == rows


def test_two_inputs_for_one_output_file_is_an_error_and_one_named_twice_is_one_task(small_model, tmp_path):
    first, second = photos(tmp_path / "one", ["x.png"]), photos(tmp_path / "two", ["x.png"])
    with pytest.raises(ValueError, match="would both be written to"):
        segzoo.predict_folder(small_model, [first, second], tmp_path / "out")
    tasks = plan_tasks([first / "x.png", first, first / "x.png"], tmp_path / "out", NAME, "labels")
    assert [task.source for task in tasks] == [first / "x.png"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--workers", "-1"], "argument --workers: expected a whole number of at least 0"),
        (["EMPTY"], "no images found in"),
        (["TWICE"], "would both be written to"),
    ],
)
def test_cli_errors_are_one_line_without_traceback(extra, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    photos(tmp_path / "twice", ["p.png", "p.jpg"])
    inputs = {"EMPTY": str(tmp_path / "empty"), "TWICE": str(tmp_path / "twice")}
    argv = ["predict", *(inputs.get(arg, arg) for arg in extra), "-c", str(tmp_path / "unused.pth")]
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 1 and err.startswith("segzoo: error:") and message in err and "Traceback" not in err


def test_torchrun_with_two_processes_writes_every_image_once(tmp_path):
    """``torchrun --nproc_per_node 2 -m segzoo.cli predict ...`` with the entry's real pipeline on tiny photos."""
    ckpt = save_mmseg_checkpoint(tmp_path / "xt.pth", synthetic_state_dict(NAME))
    folder, out, table = photos(tmp_path / "photos"), tmp_path / "out", tmp_path / "areas.csv"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command = ["-m", "segzoo.cli", "predict", str(folder), "-m", NAME, "-c", str(ckpt), "-o", str(out)]
    command += ["--output", "labels", "--summary", str(table), "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launch, *command], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert written(out) == sorted(labels_of(name) for name in NESTED)
    wrote = [line for line in done.stdout.splitlines() if line.startswith("wrote ") and line.endswith(".png")]
    assert sorted(wrote) == sorted(f"wrote {out / labels_of(name)}" for name in NESTED)  # each by one process
    assert "segzoo: 5 images segmented, 0 skipped (outputs exist), 0 failed" in done.stdout
    assert "2 processes" in done.stdout
    rows = list(csv.reader(table.open()))[1:]
    order = [row[0] for row in rows]
    assert list(dict.fromkeys(order)) == [str(folder / name) for name in sorted(NESTED)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["areas.csv", "out", "photos", "xt.pth"]  # parts merged


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_read_ahead_into_pinned_memory_on_cuda_gives_the_cpu_labels(small_model, tmp_path):
    import copy

    folder = photos(tmp_path / "photos")
    segzoo.predict_folder(small_model, folder, tmp_path / "cpu", workers=0)
    segzoo.predict_folder(copy.deepcopy(small_model), folder, tmp_path / "cuda", workers=2, device="cuda")
    for name in NESTED:
        cpu, cuda = (np.asarray(Image.open(tmp_path / where / labels_of(name))) for where in ("cpu", "cuda"))
        assert (cpu == cuda).mean() > 0.99  # float rounding differs between the devices
