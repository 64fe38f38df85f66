"""Load a base model and its tokenizer for training: a local HF folder or a hub id of a family the engine has."""

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from worker.engine.families import family_engine
from worker.engine.mamba_forward import install_forwards
from worker.engine.sparse_mamba import load_structured, needs_structured_load
from worker.engine.spec import ModelLoadFailed


def pick_device(requested: str | None) -> torch.device:
    return torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_base(
    model: str, *, device: torch.device, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, Any, str]:
    """Returns (model on `device` with our mixer forwards installed, tokenizer, family: its model_type);
    raises ModelLoadFailed when the model cannot be loaded."""
    try:
        return _load(model, device, dtype)
    except ModelLoadFailed:
        raise
    except Exception as error:  # transformers' own: a missing folder or hub id, unreadable weights
        raise ModelLoadFailed(f"{model}: {error}") from error


def _load(model: str, device: torch.device, dtype: torch.dtype) -> tuple[PreTrainedModel, Any, str]:
    # Read the config first so an unsupported architecture fails before any weights are fetched.
    config = AutoConfig.from_pretrained(model, trust_remote_code=False)
    try:
        family = family_engine(config.model_type).model_type
    except ValueError as e:
        raise ModelLoadFailed(f"{model}: {e}") from None
    if needs_structured_load(config):  # SC/SO: x_proj and the SSM parameters differ from the stock shapes
        network = load_structured(Path(model), config, dtype)
    else:
        network = AutoModelForCausalLM.from_pretrained(model, config=config, dtype=dtype, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=False)
    if tokenizer.eos_token_id is None:
        raise ModelLoadFailed(f"{model}: the tokenizer has no eos token")
    if tokenizer.pad_token_id is None:  # packing pads only the last block, and never trains on it
        tokenizer.pad_token = tokenizer.eos_token
    install_forwards(network)
    return network.to(device), tokenizer, family
