"""LoRA that really trains through Mamba's fused kernels.

The fused CUDA kernels (`mamba_inner_fn` for Mamba, `mamba_split_conv1d_scan_combined` for Mamba-2)
take x_proj / dt_proj / out_proj weights as raw tensors and never call those modules, so a LoRA
wrapper around them is silently bypassed: no gradient reaches the adapter in training mode, and
train-mode outputs differ from eval-mode outputs. Our mixer forwards (worker/engine/families/) instead hand
the kernel `effective_weight(module)` = W + (alpha / r) · B · A (lora_weights.py), built with autograd on
every call: the kernel's weight gradient flows on into A and B, and every code path computes the same
function. Mamba's out_proj is the exception: our own fused mixer (mamba_inner.py) applies its adapter
as a low-rank product, which gives the same function without a full-size weight gradient.

peft itself refuses `out_proj` on Mamba models for exactly that reason (peft PR #2562). With the fold
in place the refusal no longer applies, so injection and loading lift that one guard.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from torch import nn

from app.families import FAMILIES
from worker.engine.lora_linear import install_low_rank_linears
from worker.engine.mamba_forward import install_forwards
from worker.engine.spec import LoraSpec
from worker.engine.tied_embeddings import adapter_on_tied_embeddings, copy_shared_weights, untie_head

SSM_PARAMS_FILE = "ssm_params.safetensors"


@contextmanager
def _kernel_read_targets_allowed(model: nn.Module) -> Iterator[None]:
    """Let peft wrap out_proj on Mamba models: our folded forwards make that target train."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        yield
        return
    # peft decides by `config.model_type`; MambaConfig holds it as a class attribute, so an
    # instance attribute shadows it for the duration of the injection only.
    config.model_type = f"{model_type}-folded"
    try:
        yield
    finally:
        del config.model_type


def _check_spec(model_type: str, spec: LoraSpec) -> None:
    family = FAMILIES.get(model_type)
    folded = set(spec.target_modules) & family.undroppable_targets if family else set()
    if spec.dropout > 0 and folded:
        raise ValueError(
            f"LoRA dropout must be 0 with targets {sorted(folded)}: the adapter is folded into a weight a fused "
            "kernel reads, or applied to an expert parameter, so there is no separate input to drop out"
        )


def attach_lora(model: nn.Module, spec: LoraSpec) -> PeftModel:
    """Wrap `model` with LoRA on `spec.target_modules` (every target trains on every code path)."""
    model_type = model.config.model_type
    _check_spec(model_type, spec)
    family = FAMILIES.get(model_type)
    parameters = [t for t in spec.target_modules if family is not None and t in family.parameter_targets]
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=[t for t in spec.target_modules if t not in parameters],
        target_parameters=parameters or None,
        bias="none",
    )
    with _kernel_read_targets_allowed(model):
        peft_model = get_peft_model(model, config)
    share_tied_adapters(peft_model)
    install_low_rank_linears(peft_model)
    if spec.train_ssm_params:
        for param in ssm_parameters(peft_model).values():
            param.requires_grad_(True)
    return peft_model


def share_tied_adapters(model: nn.Module) -> None:
    """One adapter per weight, where the model ties one weight into several layers.

    Zamba2 builds its shared transformer block once per hybrid layer and ties their parameters, so peft wraps
    each layer's copy with an adapter of its own: the shared weight would get one adapter per use, which no
    merged model can hold (its uses share the merged weight too). The later copies take the first one's
    adapter instead; every use trains it, and `merge_adapter` folds it into the weight once."""
    first: dict[int, nn.Module] = {}
    for module in model.modules():
        if not isinstance(module, LoraLayer) or not len(module.lora_A):  # embeddings keep theirs
            continue
        # The weight adapted: a Linear's, or the parameter a ParamWrapper targets (experts).
        weight = getattr(module.get_base_layer(), getattr(module, "parameter_name", "weight"), None)
        owner = first.setdefault(id(weight), module) if weight is not None else module
        if owner is not module:
            module.lora_A, module.lora_B = owner.lora_A, owner.lora_B


def ssm_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The SSM's own parameters (A_log, D, dt bias) by their name in the base model."""
    names = FAMILIES[model.config.model_type].ssm_params
    found = {}
    for name, param in model.named_parameters():
        clean = name.replace("base_model.model.", "", 1).replace(".base_layer", "")
        if any(clean.endswith(f".{p}") for p in names):
            found[clean] = param
    return found


def save_adapter(model: PeftModel, folder: Path) -> None:
    """A standard PEFT adapter folder, plus the SSM parameters when they were trained."""
    folder.mkdir(parents=True, exist_ok=True)
    # The base embeddings stay frozen, so a tied lm_head adapter needs only its LoRA matrices.
    model.save_pretrained(folder, safe_serialization=True, save_embedding_layers=False)
    trained = {
        name: p.detach().float().cpu().contiguous() for name, p in ssm_parameters(model).items() if p.requires_grad
    }
    if trained:
        save_file(trained, str(folder / SSM_PARAMS_FILE))


def load_adapter(base_model: nn.Module, folder: Path, *, is_trainable: bool = False) -> PeftModel:
    """Load an adapter saved by `save_adapter`, whatever its targets (plain peft refuses out_proj).

    Also routes the base model through our forwards: the model's own forward reads dt_proj's raw
    weight, which would silently skip that part of the adapter."""
    install_forwards(base_model)
    with _kernel_read_targets_allowed(base_model):
        model = PeftModel.from_pretrained(base_model, str(folder), is_trainable=is_trainable)
    share_tied_adapters(model)
    install_low_rank_linears(model)
    ssm_file = folder / SSM_PARAMS_FILE
    if ssm_file.is_file():
        params = ssm_parameters(model)
        with torch.no_grad():
            for name, value in load_file(str(ssm_file)).items():
                params[name].copy_(value.to(params[name].dtype))
    return model


def merge_adapter(model: PeftModel) -> nn.Module:
    """Fold the adapter into the base weights for good: a plain HF model any tool can load. An adapter that
    several copies of one tied weight share (`share_tied_adapters`) is folded into that weight once; an adapter on
    the head or the embeddings unties the two (tied_embeddings.py)."""
    untie = adapter_on_tied_embeddings(model)
    if untie:
        untie_head(model)
    merged: set[int] = set()
    for module in model.modules():
        if isinstance(module, LoraLayer) and id(module.lora_A) not in merged:
            merged.add(id(module.lora_A))
            module.merge()
    plain = model.unload()
    if untie:
        copy_shared_weights(plain)
    return plain
