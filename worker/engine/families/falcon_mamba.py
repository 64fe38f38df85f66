"""Falcon-Mamba (`model_type` "falcon_mamba"): Mamba's mixer forward with the mixer's weightless RMSNorm on Δ,
B and C, placed as mamba-ssm's kernel places them (families/mamba.py). The model's own forward reads
dt_proj's raw weight on the CPU path too, which would skip a LoRA adapter there: ours folds it into every
weight the scan reads, on every path."""

from dataclasses import replace
from functools import partial
from typing import Any

from torch import Tensor
from transformers import FalconMambaConfig, FalconMambaForCausalLM
from transformers.models.falcon_mamba.modeling_falcon_mamba import (
    FalconMambaMixer,
    FalconMambaModel,
    FalconMambaOutput,
)

from worker.engine.families.mamba import ENGINE as MAMBA
from worker.engine.families.mamba import build_config as mamba_config
from worker.engine.families.mamba import delta as mamba_delta
from worker.engine.families.mamba import mixer_forward as mamba_mixer_forward
from worker.engine.mixer_parts import ForwardPath


def mixer_forward(
    mixer: FalconMambaMixer,
    hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    *,
    path: ForwardPath = "auto",
    **kwargs: Any,
) -> Tensor:
    return mamba_mixer_forward(mixer, hidden_states, attention_mask, path=path, bcdt_norms=True, **kwargs)


def delta(mixer: FalconMambaMixer, hidden: Tensor) -> Tensor:
    return mamba_delta(mixer, hidden, bcdt_norms=True)


# Mamba's engine (its layer stack, norms and chunked scan) with Falcon-Mamba's classes, forward and Δ.
ENGINE = replace(
    MAMBA,
    model_type="falcon_mamba",
    causal_lm=FalconMambaForCausalLM,
    mixers=(FalconMambaMixer,),
    mixer_forward=mixer_forward,
    fused_backbone=FalconMambaModel,
    backbone_output=FalconMambaOutput,
    delta=delta,
    build_config=partial(mamba_config, config_class=FalconMambaConfig),
    cuda_channel_elements=11.0,  # torch projections and norms around the scan kernel (memory.py)
)
