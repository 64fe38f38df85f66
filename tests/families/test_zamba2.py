"""Zamba2: its architecture options over HTTP, and LoRA on its shared transformer blocks."""

from pathlib import Path
from typing import Any

import torch
from fastapi.testclient import TestClient
from transformers import AutoModelForCausalLM

from app.families import FAMILIES
from worker.engine.families import family_engine
from worker.engine.lora_fold import attach_lora, load_adapter, merge_adapter, save_adapter
from worker.engine.loss import next_token_loss
from worker.engine.mamba_forward import install_forwards
from worker.engine.spec import LoraSpec
from worker.engine.tiny_model import family_config

ZAMBA2 = FAMILIES["zamba2"]
BODY = {"id": "z", "family": "zamba2", "d_model": 32, "n_layer": 3, "d_state": 8}
# Two hybrid layers that use the one shared block.
SHARED = {"layer_pattern": "HMH"}


def tiny(options: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    shape = ZAMBA2.shape(d_model=32, n_layer=3, d_state=8, variant=None, options=options)
    engine = family_engine("zamba2")
    torch.manual_seed(seed)
    return install_forwards(engine.causal_lm(family_config(engine, shape, 257, 256)))


def with_adapter(options: dict[str, Any], targets: tuple[str, ...] = ZAMBA2.default_targets) -> torch.nn.Module:
    model = attach_lora(tiny(options), LoraSpec(r=4, alpha=8, target_modules=targets))
    with torch.no_grad():  # a trained-looking adapter: B starts at zero
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    return model


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids).logits


# A wrong option by the request field it names.
WRONG = {
    "options.layer_pattern": {"layer_pattern": "MA"},  # M and H only
    "options.attention_heads": {"attention_heads": 3},  # 3 does not divide d_model 32
    "options.kv_heads": {"kv_heads": 2},  # Zamba2's k and v adapters need every head
    "options.attention_adapters": {"attention_adapters": 2},
    "options.experts": {"experts": 4},
}


def test_wrong_options_are_400_naming_them_and_a_created_model_shows_its_options_filled(
    client: TestClient, model_requests: list[str]
) -> None:
    answers = {param: client.post("/v1/models", json={**BODY, "options": o}) for param, o in WRONG.items()}
    assert {p: (a.status_code, a.json()["error"]["param"]) for p, a in answers.items()} == {p: (400, p) for p in WRONG}
    assert model_requests == []

    options = {"layer_pattern": "HM", "kv_heads": 2, "attention_adapters": 0}
    assert client.post("/v1/models", json={**BODY, "options": options}).status_code == 200

    assert client.get("/v1/models/z").json()["options"] == {o.name: o.default for o in ZAMBA2.options} | options
    assert len(model_requests) == 1


def test_a_shared_block_gets_one_adapter_that_every_use_trains_and_that_merges_once(tmp_path: Path) -> None:
    model = with_adapter(SHARED)
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    expected = logits(model, ids)

    # One shared block of attention (q, k, v, o) and MLP (gate_up, down): 6 adapters; per layer, 3 mixers'
    # in_proj and out_proj and 2 hybrid layers' own `linear`: 8. Two matrices each.
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(lora) == 2 * (6 + 8)
    model.train()
    next_token_loss(model, ids, ids).backward()
    assert [n for n, p in lora.items() if p.grad is None or not p.grad.abs().sum() > 0] == []

    save_adapter(model, tmp_path / "adapter")
    reloaded = load_adapter(tiny(SHARED), tmp_path / "adapter")
    assert torch.allclose(logits(reloaded, ids), expected, rtol=0, atol=1e-5)
    merged = merge_adapter(reloaded)
    assert torch.allclose(logits(merged, ids), expected, rtol=0, atol=1e-4)


def test_a_merged_adapter_on_the_tied_head_saves_every_use_of_the_shared_block(tmp_path: Path) -> None:
    # The merged model's head no longer ties to the embeddings, and the config flag that says so also stops
    # transformers tying the shared block's uses on load: the saved model must hold each use itself.
    model = with_adapter(SHARED, (*ZAMBA2.default_targets, "lm_head"))
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    expected = logits(model, ids)
    merge_adapter(model).save_pretrained(tmp_path / "merged")
    reloaded = install_forwards(AutoModelForCausalLM.from_pretrained(tmp_path / "merged"))
    assert torch.allclose(logits(reloaded, ids), expected, rtol=0, atol=1e-4)
