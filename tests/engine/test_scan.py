"""The chunked CPU scan and our mixer forwards compute what the reference recurrence computes."""

import pytest
import torch
from transformers import MambaConfig, MambaForCausalLM

from worker.engine.mamba_forward import install_forwards
from worker.engine.scan import scan_with_resets, selective_scan_chunked, selective_scan_reference

# fp32 sums in a different order: agreement to ~1e-5 relative is the expected rounding, no more.
ATOL = 1e-4


def _scan_inputs(seed: int, length: int, requires_grad: bool = False) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, d, n = 2, 6, 4
    shapes = [(b, d, length), (b, d, length), (d, n), (b, n, length), (b, n, length), (d,), (b, d, length), (d,)]
    tensors = [torch.randn(*s, generator=g) for s in shapes]
    tensors[2] = -torch.rand(d, n, generator=g) * 4  # A < 0, as -exp(A_log)
    return [t.requires_grad_(requires_grad) for t in tensors]


@pytest.mark.parametrize("length", [1, 7, 64, 129])
def test_chunked_scan_matches_reference_values_and_gradients(length):
    ref_inputs = _scan_inputs(0, length, requires_grad=True)
    chunk_inputs = [t.detach().clone().requires_grad_(True) for t in ref_inputs]
    ref = selective_scan_reference(*ref_inputs)
    out = selective_scan_chunked(*chunk_inputs)
    assert torch.allclose(out, ref, atol=ATOL)
    weights = torch.randn_like(ref)
    (ref * weights).sum().backward()
    (out * weights).sum().backward()
    for a, b in zip(ref_inputs, chunk_inputs, strict=True):
        assert torch.allclose(a.grad, b.grad, atol=ATOL, rtol=1e-4)


def _resets_through_the_reference_as_a_kernel(*inputs: torch.Tensor, reset: torch.Tensor) -> torch.Tensor:
    """What the CUDA path computes, with the reference standing in for mamba-ssm's selective_scan_fn."""
    return scan_with_resets(selective_scan_reference, *inputs, reset=reset)


@pytest.mark.parametrize(
    "scan", [selective_scan_reference, selective_scan_chunked, _resets_through_the_reference_as_a_kernel]
)
def test_a_reset_starts_a_document_from_a_zero_state_values_and_gradients(scan):
    starts = (0, 9, 10, 23)  # documents of 9, 1 and 13 tokens; then one of 7
    reset = torch.zeros(2, 30, dtype=torch.bool)
    reset[:, list(starts[1:])] = True
    inputs = _scan_inputs(2, 30, requires_grad=True)
    u, delta, A, B, C, D, z, bias = inputs
    pieces = [
        selective_scan_reference(u[..., a:e], delta[..., a:e], A, B[..., a:e], C[..., a:e], D, z[..., a:e], bias)
        for a, e in zip(starts, (*starts[1:], 30), strict=True)
    ]
    alone = torch.cat(pieces, dim=-1)  # each document scanned alone
    weights = torch.randn_like(alone)
    alone_grads = torch.autograd.grad((alone * weights).sum(), inputs)
    packed = scan(*inputs, reset=reset)
    assert torch.allclose(packed, alone, atol=ATOL)
    for a, b in zip(torch.autograd.grad((packed * weights).sum(), inputs), alone_grads, strict=True):
        assert torch.allclose(a, b, atol=ATOL, rtol=1e-4)


def test_chunked_scan_survives_huge_decay():
    """Strong decay (dt·A ≈ -200 per step) must not overflow: the chunked form never divides by a decay."""
    u, delta, A, B, C, D, z, bias = _scan_inputs(1, 50)
    delta = delta.abs() + 20
    A = A - 10
    ref = selective_scan_reference(u, delta, A, B, C, D, z, bias)
    out = selective_scan_chunked(u, delta, A, B, C, D, z, bias)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, ref, atol=ATOL)


def test_our_forward_matches_transformers_forward_on_a_base_model():
    torch.manual_seed(0)
    model = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, state_size=8)).eval()
    # Random-init mixers barely move the residual stream; scale them up so a wrong mixer shows in logits.
    with torch.no_grad():
        for layer in model.backbone.layers:
            layer.mixer.out_proj.weight.mul_(20)
    ids = torch.randint(0, 64, (2, 40))
    with torch.no_grad():
        expected = model(ids, use_cache=False).logits
        install_forwards(model, "reference")
        reference = model(ids).logits
        install_forwards(model, "torch")
        chunked = model(ids).logits
    assert (expected - expected.mean()).abs().max() > 1.0
    assert torch.allclose(reference, expected, atol=ATOL)
    assert torch.allclose(chunked, expected, atol=ATOL)
