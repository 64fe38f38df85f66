"""On CUDA: a created model of every Mamba-2-mixer family generates with its cache through the model's own
forward and kernels, and its prefill computes what the CPU does (created models' in_proj widths are often not
multiples of 8, which causal-conv1d's channel-last kernel refuses: 548 for Mamba-2 at d_model 128)."""

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("mamba_ssm")

from bench.gpu_parity import kernels_hidden  # noqa: E402
from worker.engine.loading import load_base  # noqa: E402
from worker.engine.tiny_model import create_tiny_model  # noqa: E402

pytestmark = pytest.mark.gpu

MAMBA2_MIXERS = ["mamba2", "nemotron_h", "bamba", "granitemoehybrid", "zamba2", "falcon_h1"]


@pytest.mark.parametrize("family", MAMBA2_MIXERS)
def test_a_created_model_generates_with_its_cache_on_cuda_as_on_the_cpu(family: str, tmp_path: Path) -> None:
    folder = str(create_tiny_model(tmp_path, family))
    on_gpu, _, _ = load_base(folder, device=torch.device("cuda"))
    on_cpu, _, _ = load_base(folder, device=torch.device("cpu"))
    prompt = torch.arange(1, 33)[None]  # (1, 32)

    with torch.no_grad():
        gpu_logits = on_gpu.eval()(prompt.cuda(), use_cache=True).logits.cpu()
        with kernels_hidden():  # transformers 5.17 calls the CUDA kernels whatever the tensors' device
            cpu_logits = on_cpu.eval()(prompt, use_cache=True).logits
        generated = on_gpu.generate(prompt.cuda(), max_new_tokens=8, do_sample=False, use_cache=True)

    assert (gpu_logits - cpu_logits).abs().max() <= 1e-3 * cpu_logits.abs().max()
    assert generated.shape == (1, 40)
