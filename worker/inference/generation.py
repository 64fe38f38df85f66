"""Generate a completion token by token with the model's recurrent cache (constant work per token, so
linear in length for Mamba), handing text out as it becomes final: never past a stop string, never
half a UTF-8 character."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

REPLACEMENT = "\ufffd"  # what decoding an unfinished UTF-8 sequence ends with


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float  # 0: greedy
    top_p: float
    stop: tuple[str, ...]
    seed: int | None


@dataclass(frozen=True)
class Generated:
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) | "length"


class StopScanner:
    """Feeds on the whole decoded completion so far; returns the new text that is final: before the first
    stop string, and short of a tail that may still become one (or a character still being decoded)."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.emitted = 0
        self.stopped = False

    def feed(self, text: str, *, final: bool = False) -> str:
        hits = [found for stop in self.stops if (found := text.find(stop)) >= 0]
        if hits:
            self.stopped = True
            end = min(hits)
        elif final:
            end = len(text)
        else:
            end = len(text.rstrip(REPLACEMENT))
            end -= max(
                (n for stop in self.stops for n in range(1, len(stop)) if text[:end].endswith(stop[:n])), default=0
            )
        piece = text[self.emitted : end]
        self.emitted = max(self.emitted, end)
        return piece


class _Tokens(BaseStreamer):
    """Receives each new token from `generate` (after the prompt, which it skips) and passes the final
    text on."""

    def __init__(self, tokenizer: Any, scanner: StopScanner, on_text: Callable[[str], None]) -> None:
        self.tokenizer, self.scanner, self.on_text = tokenizer, scanner, on_text
        self.ids: list[int] = []
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.ids.extend(value.view(-1).tolist())
        self._emit(final=False)

    def end(self) -> None:
        self._emit(final=True)

    def _emit(self, *, final: bool) -> None:
        if self.scanner.stopped:
            return
        piece = self.scanner.feed(self.tokenizer.decode(self.ids, skip_special_tokens=True), final=final)
        if piece:
            self.on_text(piece)


class _StopStringSeen(StoppingCriteria):
    def __init__(self, scanner: StopScanner) -> None:
        self.scanner = scanner

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.scanner.stopped, dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate(
    model: nn.Module, tokenizer: Any, prompt: list[int], sampling: Sampling, on_text: Callable[[str], None]
) -> Generated:
    """Continue `prompt` (token ids, at least one) by at most `sampling.max_tokens` tokens, calling
    `on_text` with each piece of final text."""
    scanner = StopScanner(sampling.stop)
    tokens = _Tokens(tokenizer, scanner, on_text)
    device = next(model.parameters()).device
    input_ids = torch.tensor([prompt], dtype=torch.long, device=device)  # (1, L)
    options: dict[str, Any] = {"do_sample": False}
    if sampling.temperature > 0:
        # top_k 0: only temperature and top_p shape the distribution, as OpenAI's do.
        options = {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
    model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=sampling.max_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
        streamer=tokens,
        stopping_criteria=StoppingCriteriaList([_StopStringSeen(scanner)]),
        **options,
    )
    ended = scanner.stopped or (bool(tokens.ids) and tokens.ids[-1] == tokenizer.eos_token_id)
    return Generated(completion_tokens=len(tokens.ids), finish_reason="stop" if ended else "length")
