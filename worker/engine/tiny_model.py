"""The shipped tiny base models: random-init models of a family with a byte-level tokenizer, built offline.

They make the service usable (and testable) with no hub access: a job can fine-tune `mamba-tiny` on the
demo data in a minute on CPU. Everything is a pure function of (family, seed), so two builds write
byte-identical weights.
"""

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PretrainedConfig, PreTrainedTokenizerFast

from app.families import FAMILIES
from app.families.family import ModelShape, padded_vocab
from worker.engine.families import FamilyEngine, family_engine

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


def tiny_shape(family: str) -> ModelShape:
    """The shipped tiny model's shape: d128 x 4 layers, state 16, the family's default options."""
    return FAMILIES[family].shape(d_model=128, n_layer=4, d_state=16, variant=None, options={})


def family_config(engine: FamilyEngine, shape: ModelShape, vocab_size: int, eos_id: int) -> PretrainedConfig:
    """`engine`'s config of `shape` for a tokenizer of `vocab_size` tokens whose EOS is also BOS and padding."""
    return engine.build_config(
        shape, padded_vocab(vocab_size), {"eos_token_id": eos_id, "pad_token_id": eos_id, "bos_token_id": eos_id}
    )


def create_tiny_model(folder: Path, family: str, seed: int = 0) -> Path:
    """Write a random-init tiny model and its tokenizer into `folder` (HF format, safetensors)."""
    tokenizer = byte_tokenizer()
    engine = family_engine(family)
    config = family_config(engine, tiny_shape(family), len(tokenizer), tokenizer.eos_token_id)
    # A private generator state so building a model leaves the caller's RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = engine.causal_lm(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
