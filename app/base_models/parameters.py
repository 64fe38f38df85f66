"""A created model's parameter count, from its architecture alone (the API never loads torch): each
family's catalog entry counts the model worker/engine/model_builder.py builds of it."""

from collections.abc import Mapping

from app.families import FAMILIES
from app.families.family import padded_vocab

# The byte tokenizer's size (worker/engine/tiny_model.byte_tokenizer); a test holds the two together.
BYTE_VOCAB_SIZE = 257  # 256 bytes + EOS


def parameter_count(
    *,
    family: str,
    d_model: int,
    n_layer: int,
    d_state: int,
    variant: str,
    vocab_size: int,
    options: Mapping[str, object] | None = None,
) -> int:
    """Raises ShapeError for options the family does not take."""
    shape = FAMILIES[family].shape(
        d_model=d_model, n_layer=n_layer, d_state=d_state, variant=variant, options=options or {}
    )
    return FAMILIES[family].parameter_count(shape, padded_vocab(vocab_size))
