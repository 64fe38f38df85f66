"""Next-token loss of a causal LM without materialising the full-vocabulary logits.

The model's own loss builds logits for every token (batch·seq x vocab; 8 x 1024 x 50280 is 0.8 GB in
bf16) and then an fp32 copy of them, and keeps both for backward. Here the LM head and the
cross-entropy run chunk by chunk under activation checkpointing: only one chunk's logits exist at
a time, and backward recomputes them. Same value as the model's `loss` (mean over labelled tokens).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from worker.engine.documents import attention_mask_dtype
from worker.engine.families import engine_of

IGNORE = -100
# Backward of one chunk holds its logits in bf16 and fp32, the log-softmax and its gradient: about
# 14 bytes x tokens x vocab, at the start of backward, while every saved activation is still alive.
# With a 50k vocabulary that is 2.7 GiB for 4096 tokens and 0.7 GiB for 1024, which is what sets the
# memory-lean mode's peak (bench/RESULTS.md).
CHUNK_TOKENS = 1024


def _chunk_loss_sum(lm_head: nn.Module, hidden: Tensor, labels: Tensor, scale: float) -> Tensor:
    logits = lm_head(hidden)  # (chunk, vocab)
    if scale != 1:  # a family's muP logits multiplier, applied as its causal LM applies it
        logits = logits * scale
    logits = logits.float()
    return F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")


def next_token_loss(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    documents: Tensor | None = None,
    chunk_tokens: int = CHUNK_TOKENS,
) -> Tensor:
    """Mean cross-entropy over labelled targets; inputs, targets: (b, l), targets[:, t] follows inputs[:, t].
    `documents` (b, l) int32: the packed document of each input (data.Blocks), handed to the backbone as
    the family's `backbone_kwargs` so that none reads another; None: each row is one."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    engine = engine_of(lm)
    packed = {} if documents is None else engine.backbone_kwargs(documents, attention_mask_dtype(lm.config))
    hidden = engine.backbone(lm)(input_ids=inputs, use_cache=False, **packed)[0]  # (b, l, d)
    scale = engine.logits_scale(lm.config)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_targets = targets.reshape(-1)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_tokens):
        end = start + chunk_tokens
        # The checkpoint replays the RNG state too, so LoRA dropout on lm_head recomputes identically.
        total = total + checkpoint(
            _chunk_loss_sum, lm.lm_head, hidden[start:end], flat_targets[start:end], scale, use_reentrant=False
        )
    # A tensor count, not a Python int: no host sync, so the step can be captured as a CUDA graph.
    return total / (flat_targets != IGNORE).sum().clamp(min=1)
