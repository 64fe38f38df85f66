"""How many layers of each kind (SSM, attention, MLP, experts) a job's LoRA adapter reaches: a hybrid's default
targets may leave a kind untouched, and the job says so instead of leaving the client to guess."""

from peft.tuners.lora import LoraLayer
from torch import nn

from worker.engine.families import model_layers
from worker.engine.families.family import LAYER_KINDS


def adapted_layers(model: nn.Module) -> dict[str, dict[str, int]]:
    """{kind: {"adapted": layers whose part of that kind holds a LoRA module, "layers": layers with such a part}},
    kinds in LAYER_KINDS order, only those the model has."""
    counts: dict[str, dict[str, int]] = {}
    for _, parts in model_layers(model):
        for kind, part in parts.items():
            count = counts.setdefault(kind, {"adapted": 0, "layers": 0})
            count["layers"] += 1
            count["adapted"] += any(isinstance(module, LoraLayer) for module in part.modules())
    return {kind: counts[kind] for kind in LAYER_KINDS if kind in counts}


def describe(counts: dict[str, dict[str, int]]) -> str:
    """E.g. "LoRA on 24/24 ssm layers, 0/4 attention layers"."""
    return "LoRA on " + ", ".join(f"{c['adapted']}/{c['layers']} {kind} layers" for kind, c in counts.items())
