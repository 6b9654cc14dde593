"""CUDA-graph replay in predict and evaluate: when it applies, what it caches and when it starts afresh, checked on
the CPU with a stand-in for the capture (the real capture: ``tests/test_gpu.py``, ``pytest -m gpu``)."""

import dataclasses
import gc
import types
import warnings
import weakref

import numpy as np
import pytest
import torch

import segzoo
from segzoo.cli import build_parser
from segzoo.inference import graphs
from tests.conftest import synthetic_state_dict


class StandInCapture:
    """Replaces :func:`segzoo.inference.graphs.capture` on the CPU: "captures" a forward by keeping it and
    "replays" by running it, counting both."""

    def __init__(self, fails: bool = False) -> None:
        self.fails = fails
        self.captured: list[tuple] = []
        self.replays = 0

    def __call__(self, forward, x, pool):
        if self.fails:
            raise RuntimeError("operation not permitted when stream is capturing\nmore detail")
        self.captured.append(tuple(x.shape))
        forward = weakref.ref(forward)  # as a real graph, which holds tensors but not the module

        def replay(inputs):
            self.replays += 1
            return forward()(inputs)

        replay.graph = types.SimpleNamespace(pool=lambda: "pool")
        return replay


@pytest.fixture
def stand_in(monkeypatch):
    """Graphs on the CPU, through the stand-in capture."""
    capture = StandInCapture()
    monkeypatch.setattr(graphs, "GRAPH_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(graphs, "capture", capture)
    return capture


@pytest.fixture(scope="module")
def model():
    """MogaNet-XT with synthetic weights, testing at a quarter of the ADE20K scale to stay quick on a CPU."""
    m = segzoo.create_model("moganet_xt_fpn_ade20k")
    m.load_state_dict(synthetic_state_dict("moganet_xt_fpn_ade20k"))
    m.info = dataclasses.replace(m.info, test_pipeline=dataclasses.replace(m.info.test_pipeline, scale=(512, 128)))
    return m.eval()


def test_graphs_are_the_default_on_a_gpu_at_batch_1_only():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert graphs.use_cuda_graphs(None, cuda, 1)
    assert not graphs.use_cuda_graphs(None, cuda, 2)
    assert graphs.use_cuda_graphs(True, cuda, 4)
    assert not graphs.use_cuda_graphs(False, cuda, 1)
    assert not graphs.use_cuda_graphs(None, cpu, 1)
    with pytest.raises(ValueError, match="cuda_graphs=True needs the model on a CUDA device, and it is on cpu"):
        graphs.use_cuda_graphs(True, cpu, 1)


def test_a_signature_runs_eagerly_once_then_is_captured_and_replayed(stand_in):
    model = torch.nn.Conv2d(3, 4, 3).eval()
    runner = graphs.graphed_forward(model)
    x, wide = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 12)
    with torch.inference_mode():
        expected = model(x)
        outputs = [runner(x) for _ in range(3)]
        runner(wide)
        assert stand_in.captured == [(1, 3, 8, 8)] and stand_in.replays == 2  # the capturing call replays too
        runner(wide)
        runner(x)
    assert stand_in.captured == [(1, 3, 8, 8), (1, 3, 8, 12)] and stand_in.replays == 4
    for out in outputs:
        torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_graphs_do_not_apply_with_gradients_or_in_training_mode(stand_in):
    model = torch.nn.Conv2d(3, 4, 3)
    runner = graphs.graphed_forward(model)
    x = torch.randn(1, 3, 8, 8)
    for _ in range(3):
        runner(x)  # gradients enabled
    with torch.inference_mode():
        for _ in range(3):
            runner(x)  # training mode
    assert stand_in.captured == []


def test_the_least_recently_used_graph_goes_first(stand_in):
    model = torch.nn.Conv2d(3, 4, 3).eval()
    runner = graphs.GraphedForward(model, graphs._model_state(model), max_graphs=2)
    sizes = [(8, 8), (8, 9), (8, 8), (8, 10)]  # (8, 9) is the least recently used when (8, 10) comes
    with torch.inference_mode():
        for size in sizes:
            for _ in range(2):
                runner(torch.randn(1, 3, *size))
    assert [signature[0][2:] for signature in runner.graphs] == [(8, 8), (8, 10)]


def test_graphs_belong_to_one_state_of_the_weights(stand_in):
    model = torch.nn.Conv2d(3, 4, 3).eval()
    first = graphs.graphed_forward(model)
    assert graphs.graphed_forward(model) is first  # kept with the model across predict calls
    with torch.inference_mode():
        model.load_state_dict({"weight": torch.zeros(4, 3, 3, 3), "bias": torch.zeros(4)})  # written in place
    second = graphs.graphed_forward(model)
    assert second is not first
    model.to(torch.float64)  # replaced
    assert graphs.graphed_forward(model) is not second


def test_the_runner_does_not_keep_its_model_alive(stand_in):
    model = torch.nn.Conv2d(3, 4, 3).eval()
    runner = graphs.graphed_forward(model)
    with torch.inference_mode():
        for _ in range(2):
            runner(torch.randn(1, 3, 8, 8))
    alive = weakref.ref(model)
    del model, runner
    gc.collect()
    assert alive() is None


def test_a_forward_cuda_refuses_runs_eagerly_with_one_warning(monkeypatch):
    capture = StandInCapture(fails=True)
    monkeypatch.setattr(graphs, "GRAPH_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(graphs, "capture", capture)
    model = torch.nn.Conv2d(3, 4, 3).eval()
    runner = graphs.graphed_forward(model)
    x = torch.randn(1, 3, 8, 8)
    with torch.inference_mode(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outputs = [runner(x) for _ in range(4)]
    assert len(caught) == 1
    assert "graph (operation not permitted when stream is capturing); it runs eagerly" in str(caught[0].message)
    assert "more detail" not in str(caught[0].message)
    assert runner.refused == "operation not permitted when stream is capturing"
    torch.testing.assert_close(outputs[-1], model(x).detach())


def test_external_reads_are_what_the_ops_read_but_did_not_produce():
    weight, cache = torch.randn(4, 4), torch.randn(4)
    x = torch.randn(2, 4)
    reads = graphs._ExternalReads()
    with reads:
        hidden = x @ weight
        out = (hidden + cache).relu()
        out.add_(1)
    addresses = {t.untyped_storage().data_ptr() for t in reads.external.values()}
    assert addresses == {t.untyped_storage().data_ptr() for t in (x, weight, cache)}
    assert hidden.untyped_storage().data_ptr() in reads.produced


def test_predict_replays_from_the_second_image_of_a_size_on(model, stand_in):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    eager = segzoo.predict(model, images, cuda_graphs=False, return_scores=True)
    assert stand_in.captured == []
    graphed = segzoo.predict(model, images, cuda_graphs=True, return_scores=True)
    assert stand_in.captured == [(1, 3, 128, 128)] and stand_in.replays == 2
    for a, b in zip(eager, graphed):
        np.testing.assert_array_equal(a.labels, b.labels)
        torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=0)
    segzoo.predict(model, images[0], mode="slide", cuda_graphs=True)  # slide windows go through the graphs too
    assert stand_in.replays == 3


def test_predict_off_the_gpu_by_default_and_refuses_to_insist(model):
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    segzoo.predict(model, image)
    with pytest.raises(ValueError, match="needs the model on a CUDA device"):
        segzoo.predict(model, image, cuda_graphs=True)


@pytest.mark.parametrize("command", ["predict", "eval"])
def test_the_command_line_can_turn_graphs_off(command):
    parser = build_parser()
    extra = ["--data-root", "somewhere"] if command == "eval" else []
    model = ["moganet_xt_fpn_ade20k"] if command == "eval" else []
    assert parser.parse_args([command, *model, *extra]).cuda_graphs is None
    assert parser.parse_args([command, *model, *extra, "--no-cuda-graphs"]).cuda_graphs is False
