"""The check that every LoRA tensor of a job trains: the silent failure it catches is an adapter the model's
forward never reads (stock Mamba's fused kernel reads x_proj's and dt_proj's raw weights), which trains nothing
while the job looks healthy.

Standard LoRA starts B at zero (peft's embedding adapter starts A at zero instead), so on the first step the
zero factor's partner gets no gradient by construction. Once one optimizer step has been applied (AdamW moves
every tensor that had a gradient), both factors of a module the forward reads get one. So the check runs once,
on the first step that follows an applied step (the second of a fresh job, the first of a resumed one; under fp16
a step the loss scaler skipped does not count) and asks every LoRA tensor for a non-zero gradient. A job that
ends before such a step is checked on its last step, where each module needs a gradient on one factor.
Reading the gradients costs one host sync, on that one step.
"""

import re
from collections import defaultdict

import torch
from torch import nn

from worker.engine.spec import LoraTargetNotTraining

# base_model.model.<module>.lora_A.default.weight, <module>.lora_embedding_B.default, ...; a peft
# `target_parameters` adapter nests its module in `base_layer`s.
_LORA_TENSOR = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+?)\.(?P<factor>lora_(?:embedding_)?[AB])\.")
_LAYER_INDEX = re.compile(r"\.\d+(?=\.|$)")


def _module_name(name: str) -> tuple[str, str] | None:
    """(module, factor) of a LoRA parameter's name, else None."""
    match = _LORA_TENSOR.match(name)
    if match is None:
        return None
    return match["module"].replace(".base_layer", ""), match["factor"]


class LoraGradientCheck:
    def __init__(self, model: nn.Module) -> None:
        # (module, factor, parameter) of every trainable LoRA tensor.
        self.tensors = [
            (*found, param)
            for name, param in model.named_parameters()
            if param.requires_grad and (found := _module_name(name)) is not None
        ]
        self.done = not self.tensors

    def due(self, *, applied_steps: int, last: bool) -> bool:
        """Whether to check the gradients of the step now computed: after `applied_steps` optimizer steps were
        applied, `last` when no further step of this run follows."""
        return not self.done and (applied_steps > 0 or last)

    def check(self, *, settled: bool) -> None:
        """Raise LoraTargetNotTraining naming the modules whose adapter got no gradient. `settled`: an optimizer
        step was applied before, so every tensor must have one; else one factor of each module must."""
        self.done = True
        with torch.no_grad():
            flags = [_has_gradient(p) for *_, p in self.tensors]
            has_gradient = torch.stack(flags).tolist()  # the one host sync
        trained: dict[str, set[str]] = defaultdict(set)
        factors: dict[str, set[str]] = defaultdict(set)
        for (module, factor, _), got in zip(self.tensors, has_gradient, strict=True):
            factors[module].add(factor)
            if got:
                trained[module].add(factor)
        if settled:
            stuck = {m: fs - trained[m] for m, fs in factors.items() if fs - trained[m]}
        else:
            stuck = {m: fs for m, fs in factors.items() if not trained[m]}
        if stuck:
            raise LoraTargetNotTraining(_message(stuck, factors))


def _has_gradient(param: nn.Parameter) -> torch.Tensor:
    """A device bool: a gradient with a non-zero entry (NaN and inf count: those are the divergence check's)."""
    if param.grad is None:  # zero_grad(set_to_none=True) left it so, and no backward wrote it
        return torch.zeros((), dtype=torch.bool, device=param.device)
    return param.grad.ne(0).any()


def _message(stuck: dict[str, set[str]], factors: dict[str, set[str]]) -> str:
    """The stuck modules grouped by their path with layer indices as `*`: thousands of names read as a few."""
    total: dict[str, int] = defaultdict(int)
    for module in factors:
        total[_LAYER_INDEX.sub(".*", module)] += 1
    groups: dict[str, list[str]] = defaultdict(list)
    for module in stuck:
        groups[_LAYER_INDEX.sub(".*", module)].append(module)
    parts = []
    for pattern, modules in groups.items():
        which = ", ".join(sorted({f for m in modules for f in stuck[m]}))
        parts.append(f"{pattern} ({which}; {len(modules)} of {total[pattern]} modules)")
    return (
        f"LoRA got no gradient on {'; '.join(parts)}: the model's forward does not read these adapters, so they "
        "would never train. Leave these targets out of lora.target_modules"
    )
