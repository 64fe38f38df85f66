"""Sparse Mamba variants as model options, read from the HF config (saved in config.json):

    Mamba   `config.ssm_structure`: "diagonal" (stock) | "controllable" (SC) | "observable" (SO)
    Mamba-2 `config.a_constraint`:  "none" (stock)     | "stable" (ST: every A entry <= -STABLE_FLOOR)

`apply_structure(model)` turns each SC/SO mixer's A_log (d_inner, n) into root parameters of the same
size (companion_scan.py: a Hurwitz companion matrix per channel) and shrinks x_proj from
dt_rank + 2n to dt_rank + n outputs, dropping the B (SC) or C (SO) rows that the canonical form fixes to
e_n: exactly n·d_inner fewer parameters per layer. `route` gives such a mixer our forward (pure torch on
every device: the fused CUDA kernel takes real diagonal A only, so SC/SO never use it) and wraps an ST
mixer's forward so every code path, fused kernel included, reads the constrained A.
`install_forwards` calls both; `load_structured` reads an SC/SO checkpoint, whose shapes differ from
what `from_pretrained` would build.
"""

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from app.families import FAMILIES
from app.families.mamba import MAMBA
from app.families.mamba2 import MAMBA2
from worker.engine.companion_scan import (
    companion,
    companion_scan_fast,
    companion_scan_reference,
    init_root_parameters,
    roots,
)
from worker.engine.documents import document_starts
from worker.engine.families import mixer_engine
from worker.engine.lora_weights import base_layer, effective_weight
from worker.engine.mixer_parts import ForwardPath, conv_and_gate, has_cache, mask_padding

COMPANION = ("controllable", "observable")
STABLE_FLOOR = 1e-5  # the paper's: A = -max(exp(A_log), 1e-5)


def ssm_structure(config: Any) -> str:
    return getattr(config, MAMBA.variant_field, None) or MAMBA.variants[0]


def a_constraint(config: Any) -> str:
    return getattr(config, MAMBA2.variant_field, None) or MAMBA2.variants[0]


def check_config(config: Any) -> None:
    """Raise ValueError naming the field when a config asks for a variant its family does not have."""
    own = FAMILIES.get(config.model_type)
    for family in FAMILIES.values():  # each variant field is one family's; any other family has its stock value
        field, stock = family.variant_field, family.variants[0]
        value = getattr(config, field, None) or stock
        if value not in (own.variants if own is not None and own.variant_field == field else (stock,)):
            raise ValueError(f"{field} {value!r} is not an option of {config.model_type} models")


def is_companion(mixer: nn.Module) -> bool:
    return getattr(mixer, "ssm_structure", "diagonal") in COMPANION


def graph_capturable(model: nn.Module) -> bool:
    """False for SC/SO models: capturing their complex-valued backward as a CUDA graph fails on the GPU
    (cudaErrorStreamCaptureUnsupported, seen on an H100 with torch 2.11), so the trainer runs them eager."""
    return not any(is_companion(module) for module in model.modules())


def is_stable(mixer: nn.Module) -> bool:
    return getattr(mixer, "a_constraint", "none") == "stable"


def apply_structure(model: nn.Module) -> nn.Module:
    """Give every SC/SO mixer its root parameters and shrunk x_proj (idempotent; no-op otherwise)."""
    config = getattr(model, "config", None)
    if config is None:
        return model
    check_config(config)
    for mixer in model.modules():
        # The mixers do not all keep the config (Mamba-2's does not): each carries its variant itself.
        if (engine := mixer_engine(mixer)) is not None:
            field = engine.catalog.variant_field
            setattr(mixer, field, getattr(config, field, None) or engine.catalog.variants[0])
        if is_companion(mixer) and "A_log" in mixer._parameters:
            _to_companion(mixer)
    return model


def _to_companion(mixer: nn.Module) -> None:
    d, n, rank = mixer.intermediate_size, mixer.ssm_state_size, mixer.time_step_rank
    device = mixer.A_log.device
    log_decay, log_freq = init_root_parameters(d, n)
    del mixer.A_log
    mixer.A_root_log_decay = nn.Parameter(log_decay.to(device))  # (d_inner, n/2)
    mixer.A_root_log_freq = nn.Parameter(log_freq.to(device))  # (d_inner, n/2)
    old = mixer.x_proj.weight  # (dt_rank + 2n, d_inner): rows dt | B | C
    kept = slice(rank + n, rank + 2 * n) if mixer.ssm_structure == "controllable" else slice(rank, rank + n)
    x_proj = nn.Linear(d, rank + n, bias=False, device=device, dtype=old.dtype)
    with torch.no_grad():  # keep the initializer's rows: dt | C (SC) or dt | B (SO)
        x_proj.weight.copy_(torch.cat([old[:rank], old[kept]]))
    mixer.x_proj = x_proj


def mixer_roots(mixer: nn.Module) -> Tensor:
    """One root of each conjugate pair, (d_inner, n/2) complex64."""
    return roots(mixer.A_root_log_decay, mixer.A_root_log_freq)


def mixer_A(mixer: nn.Module, dtype: torch.dtype = torch.float64) -> Tensor:
    """The dense state matrices (d_inner, n, n) of an SC/SO mixer."""
    lam = mixer_roots(mixer).to(torch.complex128 if dtype == torch.float64 else torch.complex64)
    return companion(lam, observable=mixer.ssm_structure == "observable").to(dtype)


def route(mixer: nn.Module, forward: Callable[..., Tensor], path: ForwardPath) -> Callable[..., Tensor]:
    """The forward `install_forwards` gives `mixer`: ours for SC/SO, the constrained one for ST."""
    if is_companion(mixer):
        return lambda *args, **kwargs: companion_mixer_forward(mixer, *args, path=path, **kwargs)
    if is_stable(mixer):

        def stable_forward(*args: Any, **kwargs: Any) -> Tensor:
            with _stable_A_log(mixer):
                return forward(*args, **kwargs)

        return stable_forward
    return forward


@contextmanager
def _stable_A_log(mixer: nn.Module) -> Iterator[None]:
    """For one forward, `mixer.A_log` reads clamp(A_log, log STABLE_FLOOR), so every path (HF's torch
    forward, the fused kernel, the cached step) computes A = -exp(.) <= -STABLE_FLOOR. The clamped value
    is a function of the parameter, so gradients reach it (zero where the floor binds, as in the paper)."""
    raw = mixer._parameters["A_log"]
    mixer._parameters["A_log"] = raw.clamp(min=math.log(STABLE_FLOOR))
    try:
        yield
    finally:
        mixer._parameters["A_log"] = raw


def clamped_heads(mixer: nn.Module) -> int:
    """Heads whose A the ST constraint holds at the floor."""
    return int((torch.exp(mixer.A_log.detach().float()) < STABLE_FLOOR).sum())


def companion_mixer_forward(
    mixer: nn.Module,
    hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    *,
    path: ForwardPath = "auto",
    seq_idx: Tensor | None = None,
    **kwargs: Any,
) -> Tensor:
    """SC/SO mixer: like the stock torch path, with the companion scan. "reference" runs the dense one.
    `seq_idx` (b, l): packed documents, each from a zero state."""
    if has_cache(kwargs):
        raise NotImplementedError("generation with a cache is not implemented for SC/SO Mamba models")
    hidden_states = mask_padding(hidden_states, attention_mask)
    xz = mixer.in_proj(hidden_states).transpose(1, 2)  # (b, 2·d_inner, l)
    x, z = conv_and_gate(mixer, xz, attention_mask, seq_idx)  # (b, l, d_inner), (b, d_inner, l)
    reset = None if seq_idx is None else document_starts(seq_idx)
    dt, P = F.linear(x, effective_weight(mixer.x_proj)).split([mixer.time_step_rank, mixer.ssm_state_size], dim=-1)
    delta = F.linear(dt, effective_weight(mixer.dt_proj)).transpose(1, 2)  # (b, d_inner, l)
    dt_bias = base_layer(mixer.dt_proj).bias.float()
    u, P = x.transpose(1, 2), P.transpose(1, 2)  # (b, d_inner, l), (b, n, l)
    observable = mixer.ssm_structure == "observable"
    if path == "reference":
        fixed = torch.zeros_like(P)
        fixed[:, -1] = 1  # e_n at every step
        B, C = (P, fixed) if observable else (fixed, P)
        y = companion_scan_reference(u, delta, mixer_A(mixer, torch.float32), B, C, mixer.D, z, dt_bias, reset=reset)
    else:
        y = companion_scan_fast(u, delta, mixer_roots(mixer), P, observable, mixer.D, z, dt_bias, reset=reset)
    return F.linear(
        y.transpose(1, 2).to(hidden_states.dtype), effective_weight(mixer.out_proj), base_layer(mixer.out_proj).bias
    )


def load_structured(folder: Path, config: Any, dtype: torch.dtype) -> PreTrainedModel:
    """An SC/SO checkpoint: build the structured model from its config, then load every tensor strictly."""
    if not Path(folder).is_dir():
        raise ValueError(f"{folder}: SC/SO models load from a local folder only")
    network = AutoModelForCausalLM.from_config(config, dtype=dtype)
    apply_structure(network)
    state: dict[str, Tensor] = {}
    for shard in sorted(Path(folder).glob("*.safetensors")):
        state |= load_file(str(shard))
    missing, unexpected = network.load_state_dict(state, strict=False)
    # A tied lm_head is saved once, as the embeddings.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(
            f"{folder}: weights do not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return network


def needs_structured_load(config: Any) -> bool:
    return ssm_structure(config) in COMPANION
