"""When the LoRA gradient check may run, and what it asks of each factor: B starts at zero, so on a fresh
adapter's first step A has no gradient by construction and only a module with neither factor's is stuck."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from worker.engine.lora_gradients import LoraGradientCheck
from worker.engine.spec import LoraTargetNotTraining


def _step(model: nn.Module) -> None:
    model(torch.ones(2, 4)).sum().backward()


def _lora() -> nn.Module:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    return get_peft_model(base, LoraConfig(r=2, target_modules=["0", "2"]))


def test_a_fresh_adapter_passes_on_one_factor_and_is_held_to_both_once_a_step_applied() -> None:
    model = _lora()
    check = LoraGradientCheck(model)
    assert len(check.tensors) == 4
    # An fp16 step the loss scaler skipped applied nothing: B is still zero, the check waits.
    assert not check.due(applied_steps=0, last=False) and check.due(applied_steps=0, last=True)
    _step(model)
    check.check(settled=False)  # B has its gradient; A's is zero by construction
    with pytest.raises(LoraTargetNotTraining, match=r"^LoRA got no gradient on 0 \(lora_A; 1 of 1 modules\); 2 "):
        LoraGradientCheck(model).check(settled=True)  # which is why A waits for an applied step
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _step(model)
    LoraGradientCheck(model).check(settled=True)
    assert check.done and not check.due(applied_steps=1, last=True)


def test_a_module_the_forward_never_reads_fails_even_on_the_first_step() -> None:
    model = _lora()
    model.base_model.model[2].forward = lambda x: nn.functional.linear(x, model.base_model.model[2].weight)
    _step(model)
    with pytest.raises(LoraTargetNotTraining, match=r"on 2 \(lora_A, lora_B; 1 of 1 modules\): "):
        LoraGradientCheck(model).check(settled=False)
