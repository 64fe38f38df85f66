"""The models a worker keeps loaded for completions: a few bases, least recently used dropped first, each
serving its own requests and those of the fine-tuned models on it.

Generation runs the model's own recurrent forward, which reads the raw weights (mamba_forward.py), so
a fine-tuned model's LoRA adapter is merged into its base while it serves. Before merging, the weights
the adapter changes are kept (on the CPU); swapping to another adapter, or back to the plain base,
copies them back first, so the base is bit for bit what was loaded.
"""

import gc
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn

from worker.engine.loading import load_base, pick_device
from worker.engine.lora_fold import load_adapter, merge_adapter, ssm_parameters
from worker.engine.lora_weights import adapted_weight
from worker.engine.tied_embeddings import adapter_on_tied_embeddings, tie_again

PEFT_PREFIX = "base_model.model."


@dataclass
class _Loaded:
    model: nn.Module
    tokenizer: Any
    adapter: Path | None = None  # merged in now
    originals: dict[str, Tensor] = field(default_factory=dict)  # parameter name -> the base's value (CPU)
    untied: bool = False  # the merge untied weights the base ties (tied_embeddings.py)


class LoadedModels:
    """Up to `capacity` base models; `get` loads, swaps adapters and evicts as needed."""

    def __init__(self, capacity: int, device: str | None = None) -> None:
        self.capacity = capacity
        self.device = pick_device(device)
        self._models: OrderedDict[str, _Loaded] = OrderedDict()

    def get(self, base: Path | str, adapter: Path | None = None) -> tuple[nn.Module, Any]:
        """(model in eval mode with `adapter` merged in, tokenizer) for the base at `base`."""
        key = str(base)
        loaded = self._models.pop(key, None)
        if loaded is None:
            while len(self._models) >= self.capacity:  # room first: two large models may not fit at once
                self._models.popitem(last=False)
                gc.collect()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            model, tokenizer, _ = load_base(key, device=self.device)
            loaded = _Loaded(model.eval(), tokenizer)
        if loaded.adapter != adapter:
            # A swap that fails half-way leaves weights nobody can vouch for: that base is dropped.
            _restore_base(loaded)
            if adapter is not None:
                _merge(loaded, adapter)
        self._models[key] = loaded  # now the most recently used
        return loaded.model, loaded.tokenizer

    def loaded(self) -> list[tuple[str, Path | None]]:
        """(base, merged adapter) of each loaded model, least recently used first."""
        return [(key, loaded.adapter) for key, loaded in self._models.items()]


def _merge(loaded: _Loaded, adapter: Path) -> None:
    originals = {name: value.detach().to("cpu", copy=True) for name, value in ssm_parameters(loaded.model).items()}
    peft_model = load_adapter(loaded.model, adapter)
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer):
            weight_name, weight = adapted_weight(name.removeprefix(PEFT_PREFIX), module)
            originals[weight_name] = weight.detach().to("cpu", copy=True)
    untied = adapter_on_tied_embeddings(peft_model)
    loaded.model = merge_adapter(peft_model).eval()
    loaded.originals, loaded.adapter, loaded.untied = originals, adapter, untied


def _restore_base(loaded: _Loaded) -> None:
    with torch.no_grad():
        for name, value in loaded.originals.items():
            loaded.model.get_parameter(name).copy_(value)
    if loaded.untied:
        tie_again(loaded.model)
    loaded.originals, loaded.adapter, loaded.untied = {}, None, False
