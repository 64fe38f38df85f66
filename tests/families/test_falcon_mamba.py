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
from worker.engine.families import mamba as mamba_engine
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


def test_the_delta_norm_keeps_no_float32_copy_of_delta_for_backward(tmp_path: Path) -> None:
    """Under bf16 the weightless norm computes in fp32: the route keeps only Δ itself for the norm's backward,
    which recomputes it, and the gradients are the norm's."""
    model = AutoModelForCausalLM.from_pretrained(create_tiny_model(tmp_path, "falcon_mamba")).to(torch.bfloat16)
    mixer = ssm_mixers(model)[0]
    g = torch.Generator().manual_seed(0)
    dt = torch.randn(2, mixer.time_step_rank, 12, generator=g).to(torch.bfloat16).requires_grad_()
    weight = mixer.dt_proj.weight.detach().clone().requires_grad_()
    kept: list[torch.Tensor] = []

    def keep(t: torch.Tensor) -> torch.Tensor:
        kept.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        delta = mamba_engine._delta_before_bias(mixer, dt, weight, bcdt_norms=True, dt_norm_first=False)
    full_size = delta.numel()
    assert not [t for t in kept if t.dtype == torch.float32 and t.numel() == full_size]
    upstream = torch.randn(delta.shape, generator=g).to(torch.bfloat16)
    ours = torch.autograd.grad(delta, (dt, weight), upstream)
    plain = _rms(torch.bmm(weight.expand(2, *weight.shape), dt).transpose(1, 2).float(), mixer.rms_eps)
    expected = torch.autograd.grad(plain.to(torch.bfloat16).transpose(1, 2), (dt, weight), upstream)
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("path", ["torch", "reference"])
def test_the_torch_paths_differ_from_transformers_cpu_forward_only_by_that_norm(tmp_path: Path, path: str) -> None:
    folder = create_tiny_model(tmp_path, "falcon_mamba")
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        stock = AutoModelForCausalLM.from_pretrained(folder).eval()(ids, use_cache=False).logits
        ours = install_forwards(AutoModelForCausalLM.from_pretrained(folder), path).eval()(ids).logits
    assert (ours - stock).abs().max() > 1e-3  # transformers' CPU placement is not ours
