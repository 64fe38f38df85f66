"""The model an evaluation scores: a base model, optionally with a fine-tuning job's output on top."""

from pathlib import Path
from typing import Any

from torch import nn

from worker.engine.loading import load_base, pick_device
from worker.engine.lora_fold import load_adapter


def load_for_eval(model: str, *, adapter: Path | None = None, device: str | None = None) -> tuple[nn.Module, Any, str]:
    """(model in eval mode with our mixer forwards, tokenizer, family). `adapter` is what the trainer
    wrote: a PEFT adapter folder (LoRA) or a full model folder (full fine-tuning)."""
    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        model, adapter = str(adapter), None  # full fine-tuning saved a whole model
    network, tokenizer, family = load_base(model, device=pick_device(device))
    if adapter is not None:
        network = load_adapter(network, adapter)
    return network.eval(), tokenizer, family
