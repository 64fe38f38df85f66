"""Log-likelihood of continuations given contexts: the one primitive every evaluation here is built on.

Tokenization follows lm-evaluation-harness: whitespace at the end of the context moves to the front of
the continuation, and the continuation's tokens are those of `encode(context + continuation)` past the
context's own, so a BPE merge across the boundary is scored as the model would really see it. An empty
context is replaced by the EOS token, so the first continuation token still has something to condition on.
"""

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Scored:
    logprob: float  # sum of log p(continuation token | everything before it)
    n_tokens: int
    is_greedy: bool  # every continuation token was the argmax


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) the way lm-evaluation-harness splits them."""
    trailing = len(context) - len(context.rstrip())
    if trailing:
        context, continuation = context[:-trailing], context[-trailing:] + continuation

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    if not context:
        return [tokenizer.eos_token_id], encode(continuation)
    whole, ctx = encode(context + continuation), encode(context)
    return ctx, whole[len(ctx) :]


@torch.no_grad()
def score_tokens(
    model: nn.Module,
    pairs: Sequence[tuple[list[int], list[int]]],
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    pad_id: int = 0,
    autocast: contextlib.AbstractContextManager | None = None,
) -> list[Scored]:
    """Score every (context ids, continuation ids) pair; results come back in the order given.

    Sequences are right-padded: the model is causal, so padding after a token never changes its logits.
    Longer inputs keep their last `max_length` tokens (the continuation must fit)."""
    device = next(model.parameters()).device
    # Longest first, so each batch pads little and an out-of-memory shows up on the first batch.
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    results: dict[int, Scored] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        rows, spans = [], []
        for i in chunk:
            context, continuation = pairs[i]
            if not continuation or (max_length is not None and len(continuation) > max_length):
                raise ValueError(f"a continuation must have 1 to max_length tokens, not {len(continuation)}")
            # Inputs predict the next token, so the last continuation token is only a target.
            ids = (context + continuation)[:-1]
            if max_length is not None:
                ids = ids[-max_length:]
            rows.append(ids)
            spans.append((len(ids) - len(continuation), continuation))
        width = max(len(r) for r in rows)
        inputs = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
        for r, ids in enumerate(rows):
            inputs[r, : len(ids)] = torch.tensor(ids)
        with autocast or contextlib.nullcontext():
            logits = model(input_ids=inputs.to(device), use_cache=False).logits  # (B, T, V)
        logprobs = F.log_softmax(logits.float(), dim=-1)
        for r, (i, (begin, continuation)) in enumerate(zip(chunk, spans, strict=True)):
            span = logprobs[r, begin : begin + len(continuation)]  # (n, V)
            target = torch.tensor(continuation, device=span.device)  # (n,)
            picked = span.gather(-1, target[:, None]).squeeze(-1)  # (n,)
            greedy = bool((span.argmax(-1) == target).all())
            results[i] = Scored(float(picked.sum()), len(continuation), greedy)
    return [results[i] for i in range(len(pairs))]


def score_texts(model: nn.Module, tokenizer: Any, pairs: Sequence[tuple[str, str]], **kwargs: Any) -> list[Scored]:
    """`score_tokens` for (context, continuation) strings."""
    encoded = [encode_pair(tokenizer, c, x) for c, x in pairs]
    return score_tokens(model, encoded, pad_id=tokenizer.pad_token_id or 0, **kwargs)
