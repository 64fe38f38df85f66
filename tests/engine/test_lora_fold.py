"""LoRA on every target trains through our mixer forwards, agrees in train and eval mode, and reloads."""

import pytest
import torch
from peft import PeftModel
from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

from worker.engine.lora_fold import attach_lora, load_adapter, merge_adapter, save_adapter
from worker.engine.mamba_forward import install_forwards
from worker.engine.spec import LoraSpec

VOCAB = 64
MAMBA_TARGETS = ["in_proj", "x_proj", "dt_proj", "out_proj", "embeddings", "lm_head"]
MAMBA2_TARGETS = ["in_proj", "out_proj", "embeddings", "lm_head"]


def make_model(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if family == "mamba":
        model = MambaForCausalLM(MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=8))
    else:
        model = Mamba2ForCausalLM(
            Mamba2Config(
                vocab_size=VOCAB,
                hidden_size=32,
                num_hidden_layers=2,
                state_size=8,
                expand=2,
                head_dim=16,
                num_heads=4,
                n_groups=1,
                chunk_size=16,
            )
        )
    return install_forwards(model, "torch")


def train_steps(model: torch.nn.Module, ids: torch.Tensor, steps: int = 3) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def lora_params(model: torch.nn.Module, kind: str) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if f"lora_{kind}" in n or f"lora_embedding_{kind}" in n}


def logits(model: torch.nn.Module, ids: torch.Tensor, train: bool) -> torch.Tensor:
    model.train(train)
    with torch.no_grad():
        return model(input_ids=ids).logits


CASES = [("mamba", t) for t in MAMBA_TARGETS] + [("mamba2", t) for t in MAMBA2_TARGETS]


@pytest.mark.parametrize(("family", "target"), CASES)
def test_every_target_trains_and_train_mode_equals_eval_mode(family, target, tmp_path):
    model = attach_lora(make_model(family), LoraSpec(r=4, alpha=8, target_modules=(target,)))
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))
    base_logits = logits(model, ids, train=False)
    train_steps(model, ids)

    b_params = lora_params(model, "B")
    assert b_params, f"no LoRA layers were attached for {target}"
    for name, param in b_params.items():
        assert param.abs().sum() > 0, f"{name} never received a gradient"
    train_logits, eval_logits = logits(model, ids, train=True), logits(model, ids, train=False)
    assert not torch.allclose(eval_logits, base_logits), "the adapter does not change the output"
    assert torch.equal(train_logits, eval_logits)

    save_adapter(model, tmp_path / "adapter")
    reloaded = load_adapter(make_model(family), tmp_path / "adapter")
    assert torch.allclose(logits(reloaded, ids, train=False), eval_logits, atol=1e-5)


def test_kernel_read_targets_reload_with_our_loader_and_plain_peft_takes_the_rest(tmp_path):
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(2))
    model = attach_lora(make_model("mamba"), LoraSpec(r=4, alpha=8, target_modules=("in_proj", "x_proj")))
    train_steps(model, ids)
    save_adapter(model, tmp_path / "plain")
    expected = logits(model, ids, train=False)
    # in_proj and x_proj are module calls in the model's own forward too: stock peft reproduces them.
    stock = PeftModel.from_pretrained(make_model("mamba"), str(tmp_path / "plain"))
    assert torch.allclose(logits(stock, ids, train=False), expected, atol=1e-5)

    folded = attach_lora(make_model("mamba"), LoraSpec(r=4, alpha=8, target_modules=("out_proj",)))
    save_adapter(folded, tmp_path / "folded")
    with pytest.raises(ValueError, match="out_proj"):
        PeftModel.from_pretrained(make_model("mamba"), str(tmp_path / "folded"))
    assert isinstance(load_adapter(make_model("mamba"), tmp_path / "folded"), PeftModel)


def test_ssm_parameters_train_alongside_lora_and_travel_with_the_adapter(tmp_path):
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(3))
    model = attach_lora(make_model("mamba"), LoraSpec(r=4, alpha=8, target_modules=("in_proj",), train_ssm_params=True))
    before = make_model("mamba").backbone.layers[0].mixer.A_log.detach().clone()
    train_steps(model, ids)
    after = model.base_model.model.backbone.layers[0].mixer.A_log
    assert not torch.allclose(before, after)
    save_adapter(model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "ssm_params.safetensors").is_file()
    reloaded = load_adapter(make_model("mamba"), tmp_path / "adapter")
    assert torch.allclose(logits(reloaded, ids, train=False), logits(model, ids, train=False), atol=1e-5)


@pytest.mark.parametrize(
    "targets",
    [
        ("in_proj", "dt_proj", "out_proj"),
        # The head and the embeddings share one weight: the merged model keeps one of each.
        ("in_proj", "lm_head"),
        ("in_proj", "embeddings"),
        ("embeddings", "lm_head"),
    ],
)
def test_merged_weights_saved_and_loaded_reproduce_the_adapter(targets, tmp_path):
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(4))
    model = attach_lora(make_model("mamba"), LoraSpec(r=4, alpha=8, target_modules=targets))
    train_steps(model, ids)
    expected = logits(model, ids, train=False)
    assert not torch.allclose(logits(make_model("mamba"), ids, train=False), expected, atol=1e-3)
    merged = merge_adapter(model)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert merged.config.tie_word_embeddings == ({"embeddings", "lm_head"}.isdisjoint(targets))
    assert torch.allclose(logits(merged, ids, train=False), expected, atol=1e-5)
    merged.save_pretrained(tmp_path / "merged")
    reloaded = install_forwards(MambaForCausalLM.from_pretrained(tmp_path / "merged"), "torch")
    assert torch.allclose(logits(reloaded, ids, train=False), expected, atol=1e-5)


def test_dropout_on_a_kernel_read_target_is_refused():
    with pytest.raises(ValueError, match="dropout"):
        attach_lora(make_model("mamba"), LoraSpec(dropout=0.1, target_modules=("in_proj", "dt_proj")))
    # in_proj is a module call on every path, so dropout applies there as usual.
    attach_lora(make_model("mamba"), LoraSpec(dropout=0.1, target_modules=("in_proj",)))
