"""The API's torch-free parameter count of a created model equals the count of the model the worker builds."""

from pathlib import Path

import pytest

from app.base_models.parameters import BYTE_VOCAB_SIZE, parameter_count
from app.families import FAMILIES
from worker.engine.model_builder import Architecture, create_model_folder
from worker.engine.tiny_model import byte_tokenizer


@pytest.mark.parametrize(("family", "variant"), [(f.model_type, v) for f in FAMILIES.values() for v in f.variants])
@pytest.mark.parametrize(("d_model", "n_layer", "d_state"), [(32, 2, 8), (64, 3, 4), (96, 1, 16)])
def test_the_counted_parameters_are_those_of_the_built_model(
    tmp_path: Path, family: str, variant: str, d_model: int, n_layer: int, d_state: int
) -> None:
    field = FAMILIES[family].variant_field
    arch = Architecture(id="m", family=family, d_model=d_model, n_layer=n_layer, d_state=d_state, **{field: variant})

    built = create_model_folder(arch, tmp_path / "model")

    counted = parameter_count(
        family=family, d_model=d_model, n_layer=n_layer, d_state=d_state, variant=variant, vocab_size=BYTE_VOCAB_SIZE
    )
    assert counted == built


def test_the_byte_vocabulary_is_the_workers() -> None:
    assert len(byte_tokenizer()) == BYTE_VOCAB_SIZE


# A hybrid family's options away from their defaults: other layer kinds and counts, wider heads and experts.
OPTIONS = {
    "nemotron_h": {
        "layer_pattern": "ME*M-E",
        "attention_heads": 4,
        "kv_heads": 2,
        "head_dim": 8,
        "mlp_size": 48,
        "experts": 3,
        "experts_per_token": 1,
        "expert_size": 24,
        "shared_expert_size": 40,
        "mamba_head_dim": 8,
        "mamba_groups": 2,
    },
    "falcon_h1": {"attention_heads": 2, "kv_heads": 1, "mlp_size": 40, "ssm_heads": 8, "ssm_norm": "gated"},
    # Attention first in every three layers, experts in every layer.
    "jamba": {
        "attention_period": 3,
        "attention_offset": 0,
        "expert_period": 1,
        "expert_offset": 0,
        "attention_heads": 2,
        "kv_heads": 1,
        "mlp_size": 48,
        "experts": 3,
        "experts_per_token": 1,
    },
    "bamba": {
        "layer_pattern": "*MM*M",
        "attention_heads": 8,
        "kv_heads": 8,
        "mlp_size": 40,
        "mamba_head_dim": 8,
        "mamba_groups": 2,
    },
    "granitemoehybrid": {
        "layer_pattern": "AMM",
        "attention_heads": 8,
        "kv_heads": 8,
        "mlp_size": 48,
        "experts": 3,
        "experts_per_token": 3,
        "expert_size": 24,
        "mamba_head_dim": 16,
    },
    "zamba2": {
        "layer_pattern": "HMH",
        "attention_heads": 8,
        "kv_heads": 2,
        "mlp_size": 48,
        "shared_blocks": 2,
        "attention_adapters": 0,
        "adapter_rank": 3,
    },
}


@pytest.mark.parametrize("family", sorted(OPTIONS))
def test_the_counted_parameters_of_a_model_with_options_are_those_of_the_built_model(
    tmp_path: Path, family: str
) -> None:
    shape = {"d_model": 32, "n_layer": 6, "d_state": 4}
    arch = Architecture(id="m", family=family, **shape, options=OPTIONS[family])

    built = create_model_folder(arch, tmp_path / "model")

    variant = FAMILIES[family].variants[0]
    counted = parameter_count(
        family=family, **shape, variant=variant, vocab_size=BYTE_VOCAB_SIZE, options=OPTIONS[family]
    )
    assert counted == built
