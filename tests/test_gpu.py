"""CUDA paths; run with `pytest -m gpu` on a machine with a GPU."""
import numpy as np
import pytest
import torch

import segzoo
from tests.conftest import synthetic_state_dict

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
