"""LoRA linear layers under autocast run through one autograd function that computes what peft's layer computes:
outputs and every gradient (input, A, B, a trained base weight), with and without a base bias; without autocast,
and for layers peft runs differently (dropout), peft's own forward runs."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from worker.engine.lora_linear import LowRankLinear, install_low_rank_linears


class TwoLayers(nn.Module):
    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.up = nn.Linear(24, 40, bias=bias)
        self.down = nn.Linear(40, 16, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


def adapted(bias: bool = True, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    model = get_peft_model(
        TwoLayers(bias), LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["up", "down"])
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # peft starts B at zero, which would hide a wrong B·A term
                param.normal_(std=0.5)
    return model


def run(model: nn.Module, x: torch.Tensor, autocast: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(x)
    out.float().pow(2).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return out, {"input": x.grad, **grads}


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times the low-rank function ran."""
    seen: list[int] = []
    apply = LowRankLinear.apply

    def counted(*args: object) -> torch.Tensor:
        seen.append(1)
        return apply(*args)

    monkeypatch.setattr(LowRankLinear, "apply", counted)
    return seen


@pytest.mark.parametrize("bias", [True, False])
def test_the_function_gives_pefts_output_and_every_gradient_in_fp32(bias: bool) -> None:
    layer = adapted(bias).base_model.model.up
    base, lora_A, lora_B = layer.get_base_layer(), layer.lora_A["default"].weight, layer.lora_B["default"].weight
    x = torch.randn(3, 7, 24, requires_grad=True)

    def outputs_and_gradients(forward):
        out = forward(x)
        grads = torch.autograd.grad(out.pow(2).mean(), (x, lora_A, lora_B))
        return out, grads

    peft_out, peft_grads = outputs_and_gradients(layer)
    out, grads = outputs_and_gradients(
        lambda x: LowRankLinear.apply(x, base.weight, base.bias, (layer.scaling["default"],), lora_A, lora_B)
    )

    torch.testing.assert_close(out, peft_out, atol=1e-5, rtol=1e-5)
    for grad, peft_grad in zip(grads, peft_grads, strict=True):
        torch.testing.assert_close(grad, peft_grad, atol=1e-5, rtol=1e-5)


def test_under_autocast_the_output_is_half_and_the_gradients_fp32_as_close_to_the_fp32_truth_as_pefts(
    calls: list[int],
) -> None:
    model = adapted()
    x = torch.randn(3, 7, 24)
    _, truth = run(model, x, autocast=False)
    peft_out, peft_grads = run(model, x, autocast=True)
    install_low_rank_linears(model)
    out, grads = run(model, x, autocast=True)

    assert len(calls) == 2  # both layers ran through the function
    assert out.dtype == peft_out.dtype == torch.bfloat16
    torch.testing.assert_close(out, peft_out, atol=0.05, rtol=0.05)
    assert set(grads) == set(peft_grads) and len(grads) == 5  # the input and A, B of both layers
    for name, grad in grads.items():
        assert grad.dtype == torch.float32, name
        ours, pefts = (cosine(g[name], truth[name]) for g in (grads, peft_grads))
        assert ours > 0.998 and ours > pefts - 1e-3, (name, ours, pefts)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def test_a_frozen_base_weight_gets_no_gradient_and_a_trained_one_its_own(calls: list[int]) -> None:
    model = install_low_rank_linears(adapted())
    weight = model.base_model.model.up.base_layer.weight
    run(model, torch.randn(2, 5, 24), autocast=True)
    assert calls and weight.grad is None

    weight.requires_grad_(True)
    x = torch.randn(2, 5, 24)
    _, grads = run(model, x, autocast=True)
    _, truth = run(model, x, autocast=False)
    name = "base_model.model.up.base_layer.weight"
    assert grads[name].dtype == torch.float32 and cosine(grads[name], truth[name]) > 0.998


@pytest.mark.parametrize(("autocast", "dropout"), [(False, 0.0), (True, 0.5)])
def test_without_autocast_or_with_dropout_pefts_forward_runs(autocast: bool, dropout: float, calls: list[int]) -> None:
    model = adapted(dropout=dropout)
    x = torch.randn(3, 7, 24)
    torch.manual_seed(1)
    peft_out, _ = run(model, x, autocast=autocast)
    install_low_rank_linears(model)
    torch.manual_seed(1)
    out, _ = run(model, x, autocast=autocast)

    assert not calls and torch.equal(out, peft_out)  # the same dropout mask: peft's own forward ran
