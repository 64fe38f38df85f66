"""LoRA linear layers through one autograd function compute what peft's layer computes: outputs and every
gradient (input, A, B), with and without a base bias, in fp32 and under bf16 autocast; layers peft runs
differently (dropout) keep peft's forward."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from worker.engine.lora_linear import install_low_rank_linears


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


@pytest.mark.parametrize("bias", [True, False])
def test_outputs_and_every_gradient_equal_pefts_in_fp32(bias: bool) -> None:
    model = adapted(bias)
    x = torch.randn(3, 7, 24)
    peft_out, peft_grads = run(model, x, autocast=False)
    install_low_rank_linears(model)
    out, grads = run(model, x, autocast=False)

    assert out.dtype == torch.float32
    torch.testing.assert_close(out, peft_out, atol=1e-5, rtol=1e-5)
    assert set(grads) == set(peft_grads) and len(grads) == 5  # the input and A, B of both layers
    for name, grad in grads.items():
        torch.testing.assert_close(grad, peft_grads[name], atol=1e-5, rtol=1e-5, msg=name)


def test_under_autocast_the_output_is_half_and_the_gradients_fp32_as_close_to_the_fp32_truth_as_pefts() -> None:
    model = adapted()
    x = torch.randn(3, 7, 24)
    _, truth = run(model, x, autocast=False)
    peft_out, peft_grads = run(model, x, autocast=True)
    install_low_rank_linears(model)
    out, grads = run(model, x, autocast=True)

    assert out.dtype == peft_out.dtype == torch.bfloat16
    torch.testing.assert_close(out, peft_out, atol=0.05, rtol=0.05)
    for name, grad in grads.items():
        assert grad.dtype == torch.float32, name
        ours, pefts = (cosine(g[name], truth[name]) for g in (grads, peft_grads))
        assert ours > 0.998 and ours > pefts - 1e-3, (name, ours, pefts)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def test_a_frozen_base_weight_gets_no_gradient_and_a_trained_one_its_own() -> None:
    model = install_low_rank_linears(adapted())
    weight = model.base_model.model.up.base_layer.weight
    run(model, torch.randn(2, 5, 24), autocast=False)
    assert weight.grad is None

    weight.requires_grad_(True)
    x = torch.randn(2, 5, 24)
    _, grads = run(model, x, autocast=False)
    expected_model = adapted()
    expected_model.base_model.model.up.base_layer.weight.requires_grad_(True)
    _, expected = run(expected_model, x, autocast=False)
    name = "base_model.model.up.base_layer.weight"
    torch.testing.assert_close(grads[name], expected[name], atol=1e-5, rtol=1e-5)


def test_a_layer_with_dropout_keeps_pefts_forward() -> None:
    model = adapted(dropout=0.5)
    x = torch.randn(3, 7, 24)
    torch.manual_seed(1)
    peft_out, _ = run(model, x, autocast=False)
    install_low_rank_linears(model)
    torch.manual_seed(1)
    out, _ = run(model, x, autocast=False)

    assert torch.equal(out, peft_out)  # the same dropout mask: peft's own forward ran
