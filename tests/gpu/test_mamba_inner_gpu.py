"""On CUDA: our fused Mamba mixer with out_proj's LoRA applied low-rank computes what mamba-ssm's
`mamba_inner_fn` computes on the folded weight W + s·B·A, values and every gradient, and spends no
gradient on a frozen out_proj weight.

out_proj's bias stays frozen here: mamba-ssm 2.3's backward returns its gradient as a scalar (it sums
`dout` after flattening it), which autograd refuses; Mamba checkpoints have no out_proj bias."""

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("mamba_ssm")

from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn  # noqa: E402

from worker.engine.lora_weights import LoraFactors  # noqa: E402
from worker.engine.mamba_inner import mamba_inner_lora  # noqa: E402

pytestmark = pytest.mark.gpu

D_MODEL, D_INNER, D_STATE, DT_RANK, RANK = 64, 128, 16, 8, 4


def _inputs(train_out_weight: bool) -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)

    def leaf(*shape, scale=0.2, grad=True):
        return (torch.randn(*shape, generator=g, device="cuda") * scale).requires_grad_(grad)

    return {
        "xz": leaf(2, 2 * D_INNER, 300, scale=1.0),
        "conv_weight": leaf(D_INNER, 1, 4),
        "conv_bias": leaf(D_INNER),
        "x_proj_weight": leaf(DT_RANK + 2 * D_STATE, D_INNER),
        "dt_proj_weight": leaf(D_INNER, DT_RANK),
        "out_weight": leaf(D_MODEL, D_INNER, grad=train_out_weight),
        "out_bias": leaf(D_MODEL, grad=False),
        "A": (-torch.rand(D_INNER, D_STATE, generator=g, device="cuda") - 0.5).requires_grad_(),
        "D": leaf(D_INNER),
        "dt_bias": leaf(D_INNER),
        # Two adapters on out_proj, as peft stacks them.
        "lora": [(leaf(RANK, D_INNER), leaf(D_MODEL, RANK), 2.0), (leaf(RANK, D_INNER), leaf(D_MODEL, RANK), 0.5)],
    }


def _theirs(x: dict) -> torch.Tensor:
    folded = x["out_weight"]
    for lora_A, lora_B, scale in x["lora"]:
        folded = folded + scale * lora_B @ lora_A
    return mamba_inner_fn(
        x["xz"],
        x["conv_weight"],
        x["conv_bias"],
        x["x_proj_weight"],
        x["dt_proj_weight"],
        folded,
        x["out_bias"],
        x["A"],
        None,
        None,
        x["D"],
        delta_bias=x["dt_bias"],
        delta_softplus=True,
    )


def _ours(x: dict) -> torch.Tensor:
    adapters = [LoraFactors(lora_A, lora_B, scale, torch.nn.Identity()) for lora_A, lora_B, scale in x["lora"]]
    return mamba_inner_lora(
        x["xz"],
        x["conv_weight"],
        x["conv_bias"],
        x["x_proj_weight"],
        x["dt_proj_weight"],
        x["out_weight"],
        x["out_bias"],
        adapters,
        x["A"],
        x["D"],
        x["dt_bias"],
    )


def _leaves(x: dict) -> dict[str, torch.Tensor]:
    named = {k: v for k, v in x.items() if k != "lora"}
    for i, (lora_A, lora_B, _) in enumerate(x["lora"]):
        named[f"lora_A{i}"], named[f"lora_B{i}"] = lora_A, lora_B
    return {k: v for k, v in named.items() if v.requires_grad}


@pytest.mark.parametrize("train_out_weight", [False, True])
def test_low_rank_out_proj_matches_mamba_ssm_on_the_folded_weight(train_out_weight: bool) -> None:
    x = _inputs(train_out_weight)
    leaves = _leaves(x)
    grad_out = torch.randn(2, 300, D_MODEL, device="cuda")
    results = {}
    for name, fn in (("theirs", _theirs), ("ours", _ours)):
        out = fn(x)
        grads = torch.autograd.grad(out, list(leaves.values()), grad_out)
        results[name] = (out, dict(zip(leaves, grads, strict=True)))

    (their_out, their_grads), (our_out, our_grads) = results["theirs"], results["ours"]
    torch.testing.assert_close(our_out, their_out, rtol=1e-4, atol=1e-4)
    assert ("out_weight" in our_grads) == train_out_weight
    for name, theirs in their_grads.items():
        torch.testing.assert_close(our_grads[name], theirs, rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.parametrize("train_out_weight", [False, True])
def test_out_projs_weight_gradient_gemm_runs_only_when_the_weight_trains(train_out_weight: bool) -> None:
    x = _inputs(train_out_weight)
    ours = _ours(x)
    tokens = 2 * 300
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        ours.backward(torch.randn(2, 300, D_MODEL, device="cuda"))
        torch.cuda.synchronize()
    # The weight gradient dout·yᵀ: (d_model x tokens) times (tokens x d_inner).
    weight_gradients = [
        e.input_shapes
        for e in prof.events()
        if e.name in ("aten::mm", "aten::addmm", "aten::bmm")
        and any(list(a[-2:]) == [D_MODEL, tokens] for a in e.input_shapes if len(a) >= 2)
        and any(list(b[-2:]) == [tokens, D_INNER] for b in e.input_shapes if len(b) >= 2)
    ]
    assert len(weight_gradients) == (1 if train_out_weight else 0), weight_gradients
