"""The API's torch-free parameter count of a created model equals the count of the model the worker builds."""

from pathlib import Path

import pytest

from app.base_models.parameters import BYTE_VOCAB_SIZE, parameter_count
from app.families import FAMILIES
from worker.engine.model_builder import Architecture, create_model_folder
from worker.engine.tiny_model import byte_tokenizer

# Non-default architecture options of the hybrid families, each set valid for every shape below.
OPTIONS: dict[str, list[dict[str, int | str]]] = {
    "bamba": [
        {"attention_layers": "0", "attention_heads": 8, "kv_heads": 8, "mlp_size": 40, "mamba_head_dim": 32},
        {"attention_layers": ""},  # Mamba-2 layers only
    ],
}
CASES = [(f.model_type, v, {}) for f in FAMILIES.values() for v in f.variants] + [
    (family, FAMILIES[family].variants[0], options) for family, sets in OPTIONS.items() for options in sets
]


@pytest.mark.parametrize(("family", "variant", "options"), CASES)
@pytest.mark.parametrize(("d_model", "n_layer", "d_state"), [(32, 2, 8), (64, 3, 4), (96, 4, 16)])
def test_the_counted_parameters_are_those_of_the_built_model(
    tmp_path: Path, family: str, variant: str, options: dict[str, int | str], d_model: int, n_layer: int, d_state: int
) -> None:
    field = FAMILIES[family].variant_field
    shape = {"d_model": d_model, "n_layer": n_layer, "d_state": d_state}
    arch = Architecture(id="m", family=family, **shape, options=options, **{field: variant})

    built = create_model_folder(arch, tmp_path / "model")

    counted = parameter_count(family=family, variant=variant, vocab_size=BYTE_VOCAB_SIZE, options=options, **shape)
    assert counted == built


def test_the_byte_vocabulary_is_the_workers() -> None:
    assert len(byte_tokenizer()) == BYTE_VOCAB_SIZE
