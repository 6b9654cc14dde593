"""Confusion matrix and the mmseg / detectron2 (2019) metrics, checked by hand and against NumPy references."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from segzoo.evaluation import ConfusionMatrix, detectron2_2019_metrics, mmseg_metrics

NAN = float("nan")

# 4 classes on a 2x3 image: class 2 is predicted but absent from the ground
# truth, class 3 is absent from both, one pixel is ignored.
TINY_GT = torch.tensor([[0, 0, 1], [1, 255, 0]])
TINY_PRED = torch.tensor([[0, 2, 1], [1, 0, 1]])


def assert_close(actual: list[float] | float, expected: list[float] | float) -> None:
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=1e-12, atol=1e-12)


def tiny_matrix() -> torch.Tensor:
    cm = ConfusionMatrix(4)
    cm.update(TINY_PRED, TINY_GT)
    return cm.matrix


def test_tiny_matrix_rows_are_ground_truth() -> None:
    # (gt, pred) pairs: (0,0) (0,2) (1,1) (1,1) (0,1); the ignored pixel is dropped.
    expected = [[1, 1, 1, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    matrix = tiny_matrix()
    assert matrix.dtype == torch.int64
    assert matrix.tolist() == expected


def test_tiny_mmseg() -> None:
    # label area [3, 2, 0, 0], pred area [1, 3, 1, 0], intersect [1, 2, 0, 0]
    # union [3, 3, 1, 0]: class 2 has IoU 0 and counts in the mean, class 3 is NaN.
    out = mmseg_metrics(tiny_matrix())
    assert_close(out["IoU"], [100 / 3, 200 / 3, 0.0, NAN])
    assert_close(out["Acc"], [100 / 3, 100.0, NAN, NAN])
    assert_close(out["mIoU"], (100 / 3 + 200 / 3 + 0.0) / 3)
    assert_close(out["mAcc"], (100 / 3 + 100.0) / 2)
    assert_close(out["aAcc"], 60.0)


def test_tiny_detectron2_2019_counts_predicted_only_classes() -> None:
    # tp [1, 2, 0, 0], gt pixels [3, 2, 0, 0], predicted [1, 3, 1, 0], union [3, 3, 1, 0].
    # Class 2 is predicted only: IoU 0, in the mean; class 3 is nowhere: left out.
    out = detectron2_2019_metrics(tiny_matrix())
    assert_close(out["IoU"], [100 / 3, 200 / 3, 0.0, NAN])
    assert_close(out["Acc"], [100 / 3, 100.0, NAN, NAN])
    assert_close(out["mean IoU"], (100 / 3 + 200 / 3 + 0.0) / 3)  # 33.33; today's detectron2: 50.0
    assert_close(out["mean PA"], (100 / 3 + 100.0) / 2)  # classes with ground truth only
    assert_close(out["PA"], 60.0)  # 3 of 5 labelled pixels
    assert_close(out["FW IoU"], 100 * (1 / 3 * 3 / 5 + 2 / 3 * 2 / 5))  # weights: gt share 3/5, 2/5


def test_detectron2_2019_on_the_issue_example() -> None:
    # One 2x2 image, all road (class 0); the model says car (class 1) on half of it.
    # Road: tp 2, union 4 -> IoU 1/2; car: tp 0, union 2 -> IoU 0.
    # 2019: (1/2 + 0) / 2 classes seen = 25.0; detectron2 since 2022 averages road only: 50.0.
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[0, 0], [1, 1]]), torch.tensor([[0, 0], [0, 0]]))
    out = detectron2_2019_metrics(cm.matrix)
    assert_close(out["mean IoU"], 25.0)
    assert_close(out["PA"], 50.0)
    assert_close(out["mean PA"], 50.0)  # road only: 2 of 4
    assert_close(out["FW IoU"], 50.0)  # road weighs 1, car 0
    assert_close(out["IoU"], [50.0, 0.0, NAN])


def test_metrics_of_an_all_ignored_set_are_nan() -> None:
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[0, 1], [2, 2]]), torch.full((2, 2), 255))
    assert not cm.matrix.any()
    mm, d2 = mmseg_metrics(cm.matrix), detectron2_2019_metrics(cm.matrix)
    # 2019 detectron2: every mean is 0 / 0, and the FW IoU weights gt / sum(gt) are NaN
    # (detectron2 since 2020 reports an FW IoU of 0 here).
    for value in (mm["aAcc"], mm["mIoU"], mm["mAcc"], d2["PA"], d2["mean PA"], d2["mean IoU"], d2["FW IoU"]):
        assert math.isnan(value)
    assert all(math.isnan(v) for v in mm["IoU"] + d2["IoU"] + d2["Acc"])


def detectron2_2019_reference(d2_matrix: np.ndarray) -> dict[str, float]:
    """The late-2019 ``SemSegEvaluator.evaluate`` formulas, transcribed to NumPy.

    ``d2_matrix`` is detectron2's (N+1) x (N+1) matrix: rows prediction, columns
    ground truth, last column the ignored pixels.
    """
    n = d2_matrix.shape[0] - 1
    acc = np.zeros(n)
    iou = np.zeros(n)
    tp = d2_matrix.diagonal()[:-1].astype(np.float64)
    pos_gt = np.sum(d2_matrix[:-1, :-1], axis=0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        class_weights = pos_gt / np.sum(pos_gt)
        pos_pred = np.sum(d2_matrix[:-1, :-1], axis=1).astype(np.float64)
        acc_valid = pos_gt > 0
        acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
        iou_valid = (pos_gt + pos_pred) > 0
        union = pos_gt + pos_pred - tp
        iou[acc_valid] = tp[acc_valid] / union[acc_valid]
        return {
            "mean IoU": 100 * np.sum(iou) / np.sum(iou_valid),
            "FW IoU": 100 * np.sum(iou * class_weights),
            "mean PA": 100 * np.sum(acc) / np.sum(acc_valid),
            "PA": 100 * np.sum(tp) / np.sum(pos_gt),
        }


@pytest.mark.parametrize("seed", range(8))
def test_detectron2_2019_matches_a_transcription_on_random_matrices(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 6
    matrix = rng.integers(0, 50, (n, n)) * (rng.random((n, n)) < 0.7)  # [gt, pred], many zeros
    matrix[rng.integers(n)] = 0  # a class with no ground truth (maybe predicted)
    matrix[:, rng.integers(n)] = 0  # a class never predicted
    if seed == 0:
        matrix[:] = 0  # all ignored
    d2_matrix = np.zeros((n + 1, n + 1), dtype=np.int64)
    d2_matrix[:-1, :-1] = matrix.T
    d2_matrix[:-1, -1] = rng.integers(0, 30, n)  # predictions on ignored pixels: dropped
    out = detectron2_2019_metrics(torch.from_numpy(matrix))
    for key, value in detectron2_2019_reference(d2_matrix).items():
        assert_close(out[key], value)


def reference_metrics(pred: np.ndarray, gt: np.ndarray, n: int, ignore: int) -> tuple[np.ndarray, dict, dict]:
    """Both conventions written out from their definitions, class by class."""
    keep = gt != ignore
    matrix, _, _ = np.histogram2d(gt[keep], pred[keep], bins=n, range=[[0, n], [0, n]])
    tp = np.array([np.sum((gt == c) & (pred == c) & keep) for c in range(n)], dtype=np.float64)
    gt_px = np.array([np.sum((gt == c) & keep) for c in range(n)], dtype=np.float64)
    pred_px = np.array([np.sum((pred == c) & keep) for c in range(n)], dtype=np.float64)
    union = gt_px + pred_px - tp

    mm_iou = [tp[c] / union[c] if union[c] > 0 else np.nan for c in range(n)]
    mm_acc = [tp[c] / gt_px[c] if gt_px[c] > 0 else np.nan for c in range(n)]
    mm = {
        "aAcc": 100 * tp.sum() / gt_px.sum(),
        "mIoU": 100 * np.nanmean(mm_iou),
        "mAcc": 100 * np.nanmean(mm_acc),
        "IoU": 100 * np.array(mm_iou),
        "Acc": 100 * np.array(mm_acc),
    }

    # detectron2 2019: the means run over classes with ground truth (PA) or seen anywhere (IoU).
    in_gt = [c for c in range(n) if gt_px[c] > 0]
    seen = [c for c in range(n) if union[c] > 0]
    d2_iou = np.array([tp[c] / union[c] if c in in_gt else 0.0 if c in seen else np.nan for c in range(n)])
    d2_acc = np.array([tp[c] / gt_px[c] if c in in_gt else np.nan for c in range(n)])
    d2 = {
        "PA": 100 * tp.sum() / gt_px.sum(),
        "mean PA": 100 * np.mean(d2_acc[in_gt]),
        "mean IoU": 100 * np.mean(d2_iou[seen]),
        "FW IoU": 100 * sum(d2_iou[c] * gt_px[c] / gt_px.sum() for c in in_gt),
        "IoU": 100 * d2_iou,
        "Acc": 100 * d2_acc,
    }
    return matrix, mm, d2


def random_labels(seed: int, n: int, shape: tuple[int, ...], ignore: int) -> tuple[np.ndarray, np.ndarray]:
    """Predictions that are mostly right, one class never in the ground truth, one never anywhere, some ignored."""
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, n - 2, size=shape)
    pred = np.where(rng.random(shape) < 0.6, gt, rng.integers(0, n - 1, size=shape))
    gt[rng.random(shape) < 0.1] = ignore
    return pred, gt


@pytest.mark.parametrize("seed", range(5))
def test_matches_numpy_reference(seed: int) -> None:
    n, ignore = 7, 255
    pred, gt = random_labels(seed, n, (2, 37, 53), ignore)
    ref_matrix, ref_mm, ref_d2 = reference_metrics(pred, gt, n, ignore)

    cm = ConfusionMatrix(n, ignore_index=ignore)
    cm.update(torch.from_numpy(pred), torch.from_numpy(gt))
    np.testing.assert_array_equal(cm.matrix.numpy(), ref_matrix)

    mm, d2 = mmseg_metrics(cm.matrix), detectron2_2019_metrics(cm.matrix)
    assert mm.keys() == ref_mm.keys() and d2.keys() == ref_d2.keys()
    for out, ref in ((mm, ref_mm), (d2, ref_d2)):
        for key, value in ref.items():
            assert_close(out[key], value)
    # Both conventions average the same classes for the mean IoU, predicted-only ones included.
    assert_close(mm["mIoU"], d2["mean IoU"])
    # And as detectron2 counted in 2019: ignored pixels moved to an extra ground-truth class n.
    d2_matrix = np.bincount(
        (n + 1) * pred.reshape(-1) + np.where(gt == ignore, n, gt).reshape(-1), minlength=(n + 1) ** 2
    ).reshape(n + 1, n + 1)
    for key, value in detectron2_2019_reference(d2_matrix).items():
        assert_close(d2[key], value)


def test_streaming_updates_equal_one_update() -> None:
    n = 6
    pred, gt = random_labels(11, n, (4, 20, 30), 255)
    whole = ConfusionMatrix(n)
    whole.update(torch.from_numpy(pred), torch.from_numpy(gt))

    streamed = ConfusionMatrix(n)
    streamed.update(torch.from_numpy(pred[:2]), torch.from_numpy(gt[:2]))  # a batch
    streamed.update(torch.from_numpy(pred[2]), torch.from_numpy(gt[2]))  # an image
    streamed.update(torch.from_numpy(pred[3, :7]).to(torch.uint8), torch.from_numpy(gt[3, :7]).to(torch.uint8))
    streamed.update(torch.from_numpy(pred[3, 7:]).flatten(), torch.from_numpy(gt[3, 7:]).flatten())
    assert torch.equal(streamed.matrix, whole.matrix)


@pytest.mark.parametrize(
    "pred, gt",
    [
        ([0, 3], [0, 1]),  # prediction == num_classes
        ([0, -1], [0, 1]),  # negative prediction
        ([0, 1], [0, 3]),  # target == num_classes
        ([0, 1], [-1, 1]),  # negative target
    ],
)
def test_out_of_range_labels_raise(pred: list[int], gt: list[int]) -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="outside"):
        cm.update(torch.tensor(pred), torch.tensor(gt))
    assert not cm.matrix.any()


def test_bad_inputs_raise() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        cm.update(torch.zeros(4), torch.zeros(4, dtype=torch.long))


def test_ignored_pixels_are_skipped_with_their_prediction() -> None:
    cm = ConfusionMatrix(3, ignore_index=-1)
    cm.update(torch.tensor([1, 255, 2]), torch.tensor([1, -1, 0]))
    assert cm.matrix.tolist() == [[0, 0, 1], [0, 1, 0], [0, 0, 0]]


def test_all_reduce_without_process_group_is_a_no_op() -> None:
    cm = ConfusionMatrix(4)
    cm.update(TINY_PRED, TINY_GT)
    before = cm.matrix.clone()
    cm.all_reduce()
    assert torch.equal(cm.matrix, before)


def _all_reduce_worker(rank: int, world_size: int, tmp: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world_size)
    try:
        pred, gt = random_labels(3, 5, (4, 16, 16), 255)
        half = slice(rank * 2, rank * 2 + 2)
        cm = ConfusionMatrix(5)
        cm.update(torch.from_numpy(pred[half]), torch.from_numpy(gt[half]))
        cm.all_reduce()
        torch.save(cm.matrix, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_across_two_gloo_processes(tmp_path: Path) -> None:
    mp.spawn(_all_reduce_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    pred, gt = random_labels(3, 5, (4, 16, 16), 255)
    single = ConfusionMatrix(5)
    single.update(torch.from_numpy(pred), torch.from_numpy(gt))
    for rank in range(2):
        assert torch.equal(torch.load(tmp_path / f"rank{rank}.pt"), single.matrix)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_counts_on_cuda_match_cpu() -> None:
    pred, gt = random_labels(5, 9, (2, 64, 64), 255)
    cpu = ConfusionMatrix(9)
    cpu.update(torch.from_numpy(pred), torch.from_numpy(gt))
    gpu = ConfusionMatrix(9, device="cuda")
    gpu.update(torch.from_numpy(pred).cuda(), torch.from_numpy(gt).cuda())
    assert gpu.matrix.device.type == "cuda"
    assert torch.equal(gpu.matrix.cpu(), cpu.matrix)
    for metrics in (mmseg_metrics, detectron2_2019_metrics):
        on_gpu, on_cpu = metrics(gpu.matrix), metrics(cpu.matrix)
        for key, value in on_cpu.items():
            assert_close(on_gpu[key], value)
    with pytest.raises(ValueError):
        gpu.update(torch.tensor([9], device="cuda"), torch.tensor([0], device="cuda"))
