"""The shipped tiny models: deterministic, loadable by the Auto classes, and bootstrapped atomically."""

import hashlib
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config

from worker.bootstrap import ensure_tiny_models
from worker.engine.loading import load_base
from worker.engine.spec import ModelLoadFailed
from worker.engine.tiny_model import create_tiny_model


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_writes_identical_weights_and_another_seed_does_not(tmp_path, tiny_mamba):
    again = create_tiny_model(tmp_path / "again", "mamba", seed=0)
    other = create_tiny_model(tmp_path / "other", "mamba", seed=1)
    assert _digest(again / "model.safetensors") == _digest(tiny_mamba / "model.safetensors")
    assert _digest(again / "tokenizer.json") == _digest(tiny_mamba / "tokenizer.json")
    assert _digest(other / "model.safetensors") != _digest(tiny_mamba / "model.safetensors")


@pytest.mark.parametrize("fixture", ["tiny_mamba", "tiny_mamba2"])
def test_tiny_model_loads_with_auto_classes_and_round_trips_bytes(fixture, request):
    folder = request.getfixturevalue(fixture)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert len(tokenizer) == 257 and tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    text = "reverse: héllo ☃ ="
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode()) and tokenizer.decode(ids) == text
    assert model.config.vocab_size == 264 and model.config.eos_token_id == tokenizer.eos_token_id
    assert model(torch.tensor([ids])).logits.shape == (1, len(ids), 264)
    assert sum(f.stat().st_size for f in folder.iterdir()) < 3_000_000


def test_bootstrap_builds_both_models_once_and_leaves_no_temp_folders(tmp_path):
    folders = ensure_tiny_models(tmp_path)
    assert [f.name for f in folders] == ["mamba-tiny", "mamba2-tiny"]
    stamp = (folders[0] / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_models(tmp_path) == folders
    assert (folders[0] / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mamba-tiny", "mamba2-tiny"]
    assert AutoModelForCausalLM.from_pretrained(folders[1]).config.model_type == "mamba2"


def test_load_base_reports_family_and_refuses_other_architectures(tmp_path, tiny_mamba2):
    _, tokenizer, family = load_base(str(tiny_mamba2), device=torch.device("cpu"))
    assert family == "mamba2" and tokenizer.pad_token_id is not None
    GPT2Config(n_layer=1, n_embd=8, n_head=1).save_pretrained(tmp_path)  # a config with no weights
    with pytest.raises(ModelLoadFailed, match="model_type 'gpt2' is not supported"):
        load_base(str(tmp_path), device=torch.device("cpu"))
