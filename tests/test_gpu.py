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


@pytest.mark.parametrize("name", ["moganet_xt_fpn_ade20k", "emanet_r50_cityscapes", "regproxy_vit_ti16_ade20k"])
def test_fast_path_bf16_channels_last_compiled_against_eager_fp32(name):
    """The GPU fast path (folded, channels_last, bf16 autocast, torch.compile) against eager fp32 on the GPU."""
    eager = segzoo.create_model(name)
    eager.load_state_dict(synthetic_state_dict(name))
    eager = eager.eval().to("cuda")
    x = torch.randn(2, 3, 128, 160, device="cuda")
    with torch.inference_mode():
        ref = eager(x)
        fast = segzoo.optimize_for_inference(eager, channels_last=True)
        torch.testing.assert_close(fast(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
        compiled = segzoo.optimize_for_inference(eager, channels_last=True, compile=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = compiled(x).float()
    assert (out.argmax(1) == ref.argmax(1)).float().mean() > 0.9
    assert ((out - ref).norm() / ref.norm()).item() < 3e-2
