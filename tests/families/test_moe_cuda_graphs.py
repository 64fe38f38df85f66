"""Which mixtures of experts a training step's CUDA graph can capture: those whose experts run transformers'
`grouped_mm` in bf16 on a GPU of compute capability 9.x or 10.x, where torch's grouped GEMM has no host sync.
The GPU is stood in for by the capability torch reports; tests/gpu/test_cuda_graph_gpu.py captures for real."""

from typing import Any

import pytest
import torch
from torch import nn

from app.families import FAMILIES
from worker.engine.experts import experts_capturable, experts_modules, implementation, use_grouped_mm
from worker.engine.families import family_engine, layer_kinds
from worker.engine.lora_fold import attach_lora
from worker.engine.mamba_forward import install_forwards
from worker.engine.precision import PrecisionPolicy
from worker.engine.spec import LoraSpec
from worker.engine.tiny_model import family_config

CUDA = torch.device("cuda")  # a device object only: nothing runs on it
# Each family's mixtures, in two layers: Nemotron-H's default pattern reaches its experts block at the fourth.
MOE_FAMILIES = {"granitemoehybrid": {}, "jamba": {}, "nemotron_h": {"layer_pattern": "ME"}}


def tiny(family: str, options: dict[str, Any], *, precision: str = "bf16", lora: bool = True) -> nn.Module:
    """A random-init two-layer model of `family` as the trainer holds it: the family's default adapter
    attached (or none: a full fine-tune), its frozen weights stored for `precision`."""
    engine = family_engine(family)
    shape = FAMILIES[family].shape(d_model=32, n_layer=2, d_state=8, variant=None, options=options)
    torch.manual_seed(0)
    model = install_forwards(engine.causal_lm(family_config(engine, shape, 64, 0)))
    if lora:
        model = attach_lora(model, LoraSpec.for_family(family))
    PrecisionPolicy(precision, torch.device("cpu")).prepare(model)
    return model


@pytest.fixture
def capability(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The compute capability torch reports for any GPU: set its one entry."""
    reported = [(9, 0)]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: reported[0])
    return reported


@pytest.mark.parametrize("family", MOE_FAMILIES)
@pytest.mark.parametrize(("major", "capturable"), [(9, True), (10, True), (8, False), (12, False)])
def test_bf16_adapters_on_grouped_mm_experts_are_captured_on_hopper_and_blackwell_only(
    family: str, major: int, capturable: bool, capability: list[tuple[int, int]]
) -> None:
    model = tiny(family, MOE_FAMILIES[family])
    assert "moe" in layer_kinds(model)
    assert [implementation(e) for e in experts_modules(model)] == ["grouped_mm"] * len(experts_modules(model))
    capability[0] = (major, 0)

    assert experts_capturable(model, CUDA) is capturable
    assert experts_capturable(model, torch.device("cpu")) is False


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_experts_in_fp32_are_not_captured_their_grouped_gemm_syncs(
    family: str, capability: list[tuple[int, int]]
) -> None:
    # fp32 training keeps every weight fp32; a bf16 full fine-tune keeps the trained experts fp32.
    assert experts_capturable(tiny(family, MOE_FAMILIES[family], precision="fp32"), CUDA) is False
    assert experts_capturable(tiny(family, MOE_FAMILIES[family], lora=False), CUDA) is False


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_experts_another_implementation_runs_are_switched_to_grouped_mm(
    family: str, capability: list[tuple[int, int]]
) -> None:
    model = tiny(family, MOE_FAMILIES[family])
    model.get_base_model().set_experts_implementation("eager")  # as a config asking for it loads
    assert experts_capturable(model, CUDA) is False  # the eager loop finds the experts hit on the host

    use_grouped_mm(model)

    assert {implementation(e) for e in experts_modules(model)} == {"grouped_mm"}
    assert experts_capturable(model, CUDA) is True


@pytest.mark.parametrize(("family", "options"), [("granitemoehybrid", {"experts": 0}), ("bamba", {})])
def test_a_model_without_experts_is_capturable_as_far_as_experts_go(
    family: str, options: dict[str, Any], capability: list[tuple[int, int]]
) -> None:
    capability[0] = (8, 0)
    model = tiny(family, options, precision="fp32", lora=False)
    assert "moe" not in layer_kinds(model)
    assert experts_capturable(model, CUDA) is True
