"""The shipped tiny base models: random-init Mamba / Mamba-2 with a byte-level tokenizer, built offline.

They make the service usable (and testable) with no hub access: a job can fine-tune `mamba-tiny` on the
demo data in a minute on CPU. Everything is a pure function of (family, seed), so two builds write
byte-identical weights.
"""

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM, PreTrainedTokenizerFast

from worker.engine.loading import Family

EOS = "<|endoftext|>"


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """256 byte tokens + EOS (id 256) as eos/pad/bos; no merges, so any text round-trips and the
    tokenizer needs no training data."""
    # ByteLevel maps each byte to one printable character; sorting fixes the ids across runs.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {char: i for i, char in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=EOS)


def tiny_config(family: Family, vocab_size: int, eos_id: int) -> MambaConfig | Mamba2Config:
    # Vocab rounded up to a multiple of 8 so embedding and lm_head shapes stay kernel-friendly.
    vocab = -(-vocab_size // 8) * 8
    ids = {"eos_token_id": eos_id, "pad_token_id": eos_id, "bos_token_id": eos_id}
    if family == "mamba":
        return MambaConfig(vocab_size=vocab, hidden_size=128, num_hidden_layers=4, state_size=16, expand=2, **ids)
    if family == "mamba2":
        # hidden 128 * expand 2 = 8 heads * head_dim 32.
        return Mamba2Config(
            vocab_size=vocab,
            hidden_size=128,
            num_hidden_layers=4,
            state_size=16,
            expand=2,
            num_heads=8,
            head_dim=32,
            n_groups=1,
            chunk_size=64,
            tie_word_embeddings=True,
            **ids,
        )
    raise ValueError(f"unknown family {family!r}; expected 'mamba' or 'mamba2'")


def create_tiny_model(folder: Path, family: Family = "mamba", seed: int = 0) -> Path:
    """Write a random-init tiny model and its tokenizer into `folder` (HF format, safetensors)."""
    tokenizer = byte_tokenizer()
    config = tiny_config(family, len(tokenizer), tokenizer.eos_token_id)
    model_class = MambaForCausalLM if family == "mamba" else Mamba2ForCausalLM
    # A private generator state so building a model leaves the caller's RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
