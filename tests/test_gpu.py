"""CUDA paths; run with `pytest -m gpu` on a machine with a GPU."""

import numpy as np
import pytest
import torch
from PIL import Image

import segzoo
from segzoo.datasets.folders import open_dataset
from segzoo.evaluation.runner import evaluate
from segzoo.inference import graphs
from tests.conftest import ONE_PER_ARCHITECTURE, synthetic_state_dict
from tests.test_optimize import input_size, randomize_folded_statistics, relative_error

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def model():
    m = segzoo.create_model("moganet_xt_upernet_ade20k")
    m.load_state_dict(synthetic_state_dict("moganet_xt_upernet_ade20k"))
    return m.eval()


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_cuda_matches_cpu(model, mode):
    image = np.random.default_rng(0).integers(0, 255, (120, 200, 3), dtype=np.uint8)
    cpu = segzoo.predict(model, image, mode=mode, device="cpu", return_scores=True)
    gpu = segzoo.predict(model, image, mode=mode, device="cuda", return_scores=True)
    torch.testing.assert_close(gpu.scores, cpu.scores, rtol=1e-3, atol=1e-3)
    model.to("cpu")


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_and_channels_last_on_cuda(model, amp):
    image = np.random.default_rng(1).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    ref = segzoo.predict(model, image, device="cuda")
    fast = segzoo.predict(model, image, device="cuda", amp=amp, channels_last=True)
    assert (fast.labels == ref.labels).mean() > 0.9
    model.to("cpu", memory_format=torch.contiguous_format)


@pytest.fixture
def no_tf32():
    """Full fp32 convolutions and matrix products, so that the fast path can be held to fp32 rounding."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("name", ONE_PER_ARCHITECTURE)
def test_fast_path_on_cuda_equals_eager(name, no_tf32):
    """The GPU fast path (folded, memory format chosen for CUDA) computes the eager model's function."""
    eager = segzoo.create_model(name)
    randomize_folded_statistics(eager)
    eager = eager.to("cuda")
    x = torch.randn(2, 3, *input_size(name), device="cuda")
    with torch.inference_mode():
        ref = eager(x)
        for channels_last in ("auto", True):
            out = segzoo.optimize_for_inference(eager, channels_last=channels_last)(x)
            assert relative_error(out, ref) < 1e-4, channels_last


@pytest.mark.parametrize("name", ["moganet_xt_fpn_ade20k", "emanet_r50_cityscapes", "regproxy_vit_ti16_ade20k"])
def test_fast_path_bf16_channels_last_compiled_against_eager_fp32(name):
    """The GPU fast path (folded, channels_last, bf16 autocast, torch.compile) against eager fp32 on the GPU."""
    eager = segzoo.create_model(name)
    randomize_folded_statistics(eager)
    eager = eager.to("cuda")
    x = torch.randn(2, 3, 128, 160, device="cuda")
    with torch.inference_mode():
        ref = eager(x)
        compiled = segzoo.optimize_for_inference(eager, channels_last=True, compile=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = compiled(x).float()
    assert (out.argmax(1) == ref.argmax(1)).float().mean() > 0.9
    assert ((out - ref).norm() / ref.norm()).item() < 3e-2


@pytest.mark.parametrize("name", ONE_PER_ARCHITECTURE)
def test_forward_replays_as_one_cuda_graph(name, no_tf32):
    """Captured once (no host sync or host copy in the forward; EurNet at 128x160 completes its kNN graph from
    ties), the graph replays what eager computes on a new input."""
    model = segzoo.create_model(name).eval().to("cuda")
    first, second = (torch.randn(1, 3, *input_size(name), device="cuda") for _ in range(2))
    with torch.no_grad():
        run = graphs.capture(model, first, None)
        assert relative_error(run(second), model(second)) < 1e-5


@pytest.mark.parametrize("name", ONE_PER_ARCHITECTURE)
def test_predict_replays_cuda_graphs_by_default_at_batch_1(name, no_tf32):
    """predict's default on a GPU: the first image of a size runs eagerly, the next ones replay its graph (EurNet's
    kNN graph built on the device included), with the eager labels."""
    model = segzoo.create_model(name)
    randomize_folded_statistics(model)
    model = model.eval().to("cuda")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(3)]
    eager = segzoo.predict(model, images, cuda_graphs=False, return_scores=True)
    graphed = segzoo.predict(model, images, return_scores=True)
    runner = graphs.graphed_forward(model)
    assert runner.refused is None and runner.graphs  # one graph per window or image size
    for a, b in zip(eager, graphed):
        assert relative_error(b.scores, a.scores) < 1e-5
        assert (a.labels == b.labels).mean() > 0.999


def test_evaluation_replays_cuda_graphs_at_batch_1(model, tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    rng = np.random.default_rng(0)
    for i in range(4):
        for sub, suffix, array in (
            ("images", ".jpg", rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)),
            ("annotations", ".png", rng.integers(0, 151, (64, 96), dtype=np.uint8)),
        ):
            (root / sub / "validation").mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / sub / "validation" / f"ADE_val_{i:08d}{suffix}")
    dataset = open_dataset("ADE20K", root)
    model.to("cuda")
    eager = evaluate(model, dataset, progress=False, cuda_graphs=False)
    graphed = evaluate(model, dataset, progress=False)
    model.to("cpu")
    assert graphed.settings["cuda_graphs"] is True and eager.settings["cuda_graphs"] is False
    assert graphed.metrics["mIoU"] == pytest.approx(eager.metrics["mIoU"], abs=1e-6)
