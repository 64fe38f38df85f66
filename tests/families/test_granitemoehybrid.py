"""Granite 4.0-H's own rules: its architecture options over HTTP (checked, filled, shown), the experts' adapter
refusing dropout as a folded target does, its logits' scaling in the trainer's loss, and a served adapter merged
into every target (the experts' 3-D weights too) and swapped out again."""

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient

from app.errors import ApiError
from app.families import FAMILIES
from app.jobs.config import resolve_lora
from app.jobs.schemas import LoraRequest
from worker.engine.families import family_engine, layer_kinds
from worker.engine.loading import load_base
from worker.engine.lora_fold import attach_lora, save_adapter
from worker.engine.loss import next_token_loss
from worker.engine.mamba_forward import install_forwards
from worker.engine.model_builder import Architecture, create_model_folder
from worker.engine.spec import LoraSpec
from worker.inference.loaded_models import LoadedModels

FAMILY = "granitemoehybrid"
SHAPE = {"d_model": 32, "n_layer": 2, "d_state": 8}


# A wrong option and the field the 400 names.
WRONG_OPTIONS = [
    ({"layer_pattern": "MAX"}, "options.layer_pattern"),
    ({"attention_heads": 3}, "options.attention_heads"),  # 3 heads do not divide d_model 32
    ({"kv_heads": 3}, "options.kv_heads"),  # nor 3 kv heads the 4 query heads
    ({"experts": 2, "experts_per_token": 3}, "options.experts_per_token"),
    ({"mamba_head_dim": 48}, "options.mamba_head_dim"),  # the mixer's 64 channels
    ({"experts": -1}, "options.experts"),
]


def test_wrong_options_are_400_naming_them_and_a_created_model_shows_its_options_filled(
    client: TestClient, model_requests: list[str]
) -> None:
    body: dict[str, Any] = {"id": "granite", "family": FAMILY, **SHAPE}
    refused = [client.post("/v1/models", json={**body, "options": options}) for options, _ in WRONG_OPTIONS]
    assert [(r.status_code, r.json()["error"]["param"]) for r in refused] == [(400, p) for _, p in WRONG_OPTIONS]
    assert model_requests == []

    dense = {"layer_pattern": "AMM", "experts": 0}
    assert client.post("/v1/models", json={**body, "options": dense}).status_code == 200
    defaults = {option.name: option.default for option in FAMILIES[FAMILY].options}
    assert client.get("/v1/models/granite").json()["options"] == {**defaults, **dense}


def test_dropout_on_the_experts_is_refused_as_on_a_kernel_read_target() -> None:
    lora = LoraRequest(dropout=0.1, target_modules=["q_proj", "experts.gate_up_proj"])

    with pytest.raises(ApiError) as refused:
        resolve_lora(lora, family=FAMILY)

    assert refused.value.param == "lora.dropout" and "experts.gate_up_proj" in str(refused.value)
    assert resolve_lora(lora.model_copy(update={"target_modules": ["q_proj"]}), family=FAMILY)


def test_the_loss_scales_the_logits_as_the_model_does() -> None:
    engine = family_engine(FAMILY)
    shape = FAMILIES[FAMILY].shape(**SHAPE, variant=None, options={})
    torch.manual_seed(0)
    model = install_forwards(engine.causal_lm(engine.build_config(shape, 64, {})))
    assert layer_kinds(model) == {"ssm", "attention", "mlp", "moe"}  # the default options give every kind
    model.config.logits_scaling = 0.125  # logits 8 times the head's: far from what an unscaled loss computes
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(input_ids=ids, labels=ids).loss
        head = model.lm_head(model.model(input_ids=ids)[0][:, :-1]).flatten(0, 1)
        loss = next_token_loss(model, ids[:, :-1], ids[:, 1:], chunk_tokens=7)
    assert torch.allclose(loss, expected, atol=1e-5)
    assert not torch.allclose(loss, F.cross_entropy(head, ids[:, 1:].flatten()), atol=1e-2)


def test_a_served_adapter_is_merged_into_every_target_and_swapped_out_to_the_same_base(tmp_path: Path) -> None:
    create_model_folder(Architecture(id="m", family=FAMILY, **SHAPE), tmp_path / "model")
    model, _, _ = load_base(str(tmp_path / "model"), device=torch.device("cpu"))
    tuned = attach_lora(model, LoraSpec.for_family(FAMILY))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B starts at zero: a random one moves the logits as a trained adapter would
        for name, param in tuned.named_parameters():
            if "lora_B" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.5)
    save_adapter(tuned, tmp_path / "adapter")
    ids = torch.tensor([[104, 105, 33, 40, 41]])
    models = LoadedModels(capacity=1, device="cpu")
    with torch.no_grad():
        expected = tuned.eval()(input_ids=ids).logits
        plain = models.get(tmp_path / "model")[0](input_ids=ids).logits
        served = models.get(tmp_path / "model", tmp_path / "adapter")[0](input_ids=ids).logits
        back = models.get(tmp_path / "model")[0](input_ids=ids).logits
    assert torch.allclose(served, expected, atol=1e-5) and not torch.allclose(served, plain, atol=1e-2)
    assert torch.equal(back, plain)
