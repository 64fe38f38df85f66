"""Falcon-Mamba's Δ is normalised as mamba-ssm's fused kernel normalises it (the kernel that trained the
checkpoints, and the one our GPU path runs): over Δ's d_inner channels after dt_proj, before its bias.
transformers' CPU forward normalises dt's dt_rank columns before dt_proj, so its CPU and GPU forwards
disagree; ours give the same Δ on every path."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from worker.engine.families import engine_of, ssm_mixers
from worker.engine.mamba_forward import install_forwards
from worker.engine.tiny_model import create_tiny_model


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def test_delta_is_normalised_over_its_channels_after_dt_proj(tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(create_tiny_model(tmp_path, "falcon_mamba"))
    mixer = ssm_mixers(model)[0]
    hidden = torch.randn(2, 12, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    seq = hidden.shape[1]
    x = mixer.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)[0]
    x = F.silu(F.conv1d(x, mixer.conv1d.weight, mixer.conv1d.bias, padding=3, groups=x.shape[1])[..., :seq])
    dt = F.linear(x.transpose(1, 2), mixer.x_proj.weight)[..., : mixer.time_step_rank]
    expected = F.softplus(_rms(F.linear(dt, mixer.dt_proj.weight), mixer.rms_eps) + mixer.dt_proj.bias)

    with torch.no_grad():
        assert torch.allclose(engine_of(model).delta(mixer, hidden), expected, atol=1e-5)


@pytest.mark.parametrize("path", ["torch", "reference"])
def test_the_torch_paths_differ_from_transformers_cpu_forward_only_by_that_norm(tmp_path: Path, path: str) -> None:
    folder = create_tiny_model(tmp_path, "falcon_mamba")
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        stock = AutoModelForCausalLM.from_pretrained(folder).eval()(ids, use_cache=False).logits
        ours = install_forwards(AutoModelForCausalLM.from_pretrained(folder), path).eval()(ids).logits
    assert (ours - stock).abs().max() > 1e-3  # transformers' CPU placement is not ours
