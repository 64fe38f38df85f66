"""A created model's parameter count, from its architecture alone (the API never loads torch).

It mirrors what worker/engine/model_builder.py builds: transformers' Mamba / Mamba-2 with expand 2,
a width-4 causal convolution with bias, tied embeddings, and Mamba-2 heads of MAMBA2_HEAD_DIM. SC/SO
models drop the fixed B or C rows of x_proj. tests/sparse/test_model_parameters.py holds it to the
count of built models.
"""

import math

from app.base_models.architectures import COMPANION_STRUCTURES

# The worker's values (worker/engine/model_builder.py, tiny_model.byte_tokenizer), which the engine
# keeps free of app imports; the test that compares counts fails if they part.
EXPAND = 2
CONV_KERNEL = 4
MAMBA2_HEAD_DIM = 64
BYTE_VOCAB_SIZE = 257  # 256 bytes + EOS


def padded_vocab(vocab_size: int) -> int:
    """The embedding rows of a model whose tokenizer has `vocab_size` tokens (kernel-friendly multiple of 8)."""
    return -(-vocab_size // 8) * 8


def parameter_count(*, family: str, d_model: int, n_layer: int, d_state: int, variant: str, vocab_size: int) -> int:
    d_inner = EXPAND * d_model
    if family == "mamba":
        dt_rank = math.ceil(d_model / 16)
        b_and_c = d_state if variant in COMPANION_STRUCTURES else 2 * d_state  # SC/SO fix one of them
        mixer = (
            d_model * 2 * d_inner  # in_proj
            + d_inner * (CONV_KERNEL + 1)  # conv1d weight and bias
            + d_inner * (dt_rank + b_and_c)  # x_proj
            + (dt_rank + 1) * d_inner  # dt_proj weight and bias
            + d_inner * d_state  # A (or its roots: the same count)
            + d_inner  # D
            + d_inner * d_model  # out_proj
        )
    else:
        heads = d_inner // MAMBA2_HEAD_DIM
        conv_dim = d_inner + 2 * d_state  # one group
        mixer = (
            d_model * (2 * d_inner + 2 * d_state + heads)  # in_proj: gate, x, B, C, dt
            + conv_dim * (CONV_KERNEL + 1)
            + 3 * heads  # dt_bias, A_log, D
            + d_inner  # gated RMSNorm
            + d_inner * d_model  # out_proj
        )
    layer = mixer + d_model  # the block's RMSNorm
    return padded_vocab(vocab_size) * d_model + n_layer * layer + d_model  # embeddings, layers, final norm
