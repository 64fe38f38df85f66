"""Packed documents stay apart: a packed row gives each document the logits, loss and gradients it has alone."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from app.families import FAMILIES
from worker.engine.data import IGNORE, pack
from worker.engine.documents import attention_mask_dtype, causal_conv1d, document_causal_mask, document_positions
from worker.engine.families import engine_of, family_engine, ssm_mixers
from worker.engine.lora_fold import attach_lora
from worker.engine.loss import next_token_loss
from worker.engine.mamba_forward import install_forwards
from worker.engine.spec import LoraSpec

VOCAB = 64
LENGTHS = (5, 11, 7)  # three documents, crossing the scan's chunks of 8
# Our layer loop, then the hybrids on their model's own (with every kind of layer in their default pattern).
FAMILIES_TESTED = (
    *("mamba", "mamba2", "falcon_mamba"),
    *("nemotron_h", "bamba", "granitemoehybrid", "zamba2", "falcon_h1", "jamba"),
)


def documents(seed: int = 0) -> list[tuple[list[int], list[bool]]]:
    """Examples as data.tokenize_record gives them; the middle one trains only its second half."""
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in LENGTHS]
    return [(ids[0], [True] * 5), (ids[1], [False] * 5 + [True] * 6), (ids[2], [True] * 7)]


def tiny_lm(
    model_type: str, attention: str | None = None, options: dict | None = None, **fields: object
) -> torch.nn.Module:
    """A random-init d_model 32 x 4 layers model of the family with LoRA (B non-zero) on its default targets,
    scanning in chunks of 8; `attention`: the attention implementation, else the model's default; `options`:
    the catalog's, else the tiny defaults; `fields`: config fields set before the model is built."""
    engine = family_engine(model_type)
    family = FAMILIES[model_type]
    shape = family.shape(d_model=32, n_layer=4, d_state=8, variant=None, options=options or {})
    config = engine.build_config(shape, VOCAB, {})
    config.update(fields)
    if attention is not None:
        config._attn_implementation = attention
    torch.manual_seed(0)
    model = install_forwards(engine.causal_lm(config))
    for mixer in ssm_mixers(model):
        if hasattr(mixer, "chunk_size"):  # Mamba-2's
            mixer.chunk_size = 8
    model = attach_lora(model, LoraSpec(r=4, alpha=8, target_modules=family.default_targets))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


def logits(model: torch.nn.Module, inputs: torch.Tensor, docs: torch.Tensor | None = None) -> torch.Tensor:
    """The logits (b, l, vocab), with packed documents `docs` (b, l) as training hands them to the backbone."""
    lm = model.get_base_model()
    engine = engine_of(lm)
    packed = {} if docs is None else engine.backbone_kwargs(docs, attention_mask_dtype(lm.config))
    hidden = engine.backbone(lm)(input_ids=inputs, use_cache=False, **packed)[0]
    return lm.lm_head(hidden) * engine.logits_scale(lm.config)


def gradients(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_each_document_as_alone(model: torch.nn.Module, atol: float) -> None:
    """A packed row of `documents()` gives each its logits, loss and gradients alone, on the model's device."""
    device = next(model.parameters()).device
    examples = documents()
    blocks = pack(examples, max_seq_len=sum(LENGTHS) - 1, pad_id=0)  # one row, no padding
    inputs, targets, docs = (t.to(device) for t in (blocks.inputs, blocks.targets, blocks.documents))
    assert docs.tolist() == [[0] * 5 + [1] * 11 + [2] * 6]

    packed_logits = logits(model, inputs, docs)
    packed_grads = gradients(model, next_token_loss(model, inputs, targets, docs) * (targets != IGNORE).sum())
    alone_sum, start = 0.0, 0
    for i, (ids, trained) in enumerate(examples):
        ids = torch.tensor(ids, device=device)
        labels = torch.where(torch.tensor(trained, device=device), ids, IGNORE)
        alone_logits = logits(model, ids[None, :-1])
        rows = slice(start, start + len(ids) - 1)  # the document's inputs but its last (which predicts nothing)
        assert torch.allclose(packed_logits[:, rows], alone_logits, atol=atol), i
        alone = next_token_loss(model, ids[None, :-1], labels[None, 1:])
        packed = next_token_loss(model, inputs, targets.masked_fill(docs != i, IGNORE), docs)
        assert torch.allclose(packed, alone, atol=atol), i
        alone_sum = alone_sum + alone * (labels[1:] != IGNORE).sum()
        start += len(ids)
    alone_grads = gradients(model, alone_sum)
    assert packed_grads.keys() == alone_grads.keys()
    for name, grad in packed_grads.items():
        assert torch.allclose(grad, alone_grads[name], atol=atol), name


@pytest.mark.parametrize("model_type", FAMILIES_TESTED)
def test_a_packed_row_gives_each_document_its_own_logits_loss_and_gradients(model_type: str) -> None:
    assert_each_document_as_alone(tiny_lm(model_type), atol=1e-5)


def test_a_hybrid_with_eager_attention_keeps_the_documents_apart_with_the_float_mask() -> None:
    assert_each_document_as_alone(tiny_lm("bamba", attention="eager"), atol=1e-5)


def test_falcon_h1_keeps_the_documents_apart_with_its_gated_norm_and_mup_multipliers() -> None:
    """The default (no gated norm: y gated by silu(z)) is in FAMILIES_TESTED; the multipliers are a released
    checkpoint's kind, unlike a random-init model's (all 1)."""
    model = tiny_lm(
        "falcon_h1",
        attention="eager",
        options={"ssm_norm": "gated"},
        ssm_in_multiplier=1.25,
        ssm_multipliers=[0.35, 0.25, 0.7, 0.5, 1.4],
        attention_in_multiplier=0.8,
        key_multiplier=0.4,
        lm_head_multiplier=0.25,
    )
    assert_each_document_as_alone(model, atol=1e-5)


def test_the_documents_convolution_is_the_models_own_where_nothing_crosses() -> None:
    conv = torch.nn.Conv1d(6, 6, kernel_size=4, groups=6, padding=3)
    x = torch.randn(2, 6, 12)
    seq_idx = torch.tensor([[0] * 12, [0] * 3 + [1] * 9]).int()
    out = causal_conv1d(x, conv.weight, conv.bias, seq_idx)
    assert torch.allclose(out[0], conv(x)[0, :, :12], atol=1e-6)  # one document: the plain convolution
    assert torch.allclose(out[1, :, 3:], conv(x[1:, :, 3:])[0, :, :9], atol=1e-6)  # the second, alone


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_attention_reads_only_its_document_with_the_documents_positions_and_mask(attention: str) -> None:
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    config._attn_implementation = attention
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    ids = [torch.tensor(example) for example, _ in documents()]
    seq_idx = torch.cat([torch.full((len(d),), i) for i, d in enumerate(ids)])[None].int()
    assert document_positions(seq_idx).tolist() == [[*range(5), *range(11), *range(7)]]
    mask = document_causal_mask(seq_idx, None if attention == "sdpa" else torch.float32)
    with torch.no_grad():
        packed = model(torch.cat(ids)[None], position_ids=document_positions(seq_idx), attention_mask=mask).logits
        alone = torch.cat([model(d[None]).logits for d in ids], dim=1)
    assert torch.allclose(packed, alone, atol=1e-5)
