"""Our models as an lm-evaluation-harness `LM`, so its standard tasks (lambada_openai, hellaswag, piqa,
arc_easy, arc_challenge, winogrande, openbookqa) run on a base model or a fine-tuning job's output
wherever their data sets are available locally.

Importing this module needs `lm_eval`; the rest of worker/evaluation does not. Registered as
`mambaft`: `lm_eval --model mambaft --model_args pretrained=<folder>,adapter=<folder> --tasks piqa`.
"""

import contextlib
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from torch import nn

from worker.evaluation.model import load_for_eval
from worker.evaluation.scoring import score_texts, score_tokens

DEFAULT_MAX_GEN_TOKS = 256


@register_model("mambaft")
class MambaLM(LM):
    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        batch_size: int = 16,
        max_length: int = 2048,
        autocast: contextlib.AbstractContextManager | None = None,
    ) -> None:
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_length, self.autocast = int(batch_size), int(max_length), autocast

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "MambaLM":
        """`pretrained=<model>[,adapter=<folder>][,device=cuda][,batch_size=16][,max_length=2048]`."""
        args = dict(item.split("=", 1) for item in arg_string.split(",") if item)
        args |= {k: v for k, v in (additional_config or {}).items() if k in ("batch_size", "device") and v is not None}
        adapter = Path(args["adapter"]) if args.get("adapter") else None
        model, tokenizer, _ = load_for_eval(args["pretrained"], adapter=adapter, device=args.get("device"))
        return cls(
            model, tokenizer, batch_size=int(args.get("batch_size", 16)), max_length=int(args.get("max_length", 2048))
        )

    def _scoring_options(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "max_length": self.max_length, "autocast": self.autocast}

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        scored = score_texts(self.model, self.tokenizer, [req.args for req in requests], **self._scoring_options())
        return [(s.logprob, s.is_greedy) for s in scored]

    def loglikelihood_rolling(self, requests: list[Instance]) -> list[float]:
        """Every token of each string scored once, in windows of at most `max_length` inputs, the first
        conditioned on EOS (lm-evaluation-harness's rolling scheme)."""
        windows, owner = [], []
        for n, req in enumerate(requests):
            (text,) = req.args
            tokens = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            rolling = get_rolling_token_windows(
                token_list=tokens, prefix_token=self.tokenizer.eos_token_id, max_seq_len=self.max_length, context_len=1
            )
            for window in map(make_disjoint_window, rolling):
                windows.append(window)
                owner.append(n)
        scored = score_tokens(self.model, windows, pad_id=self.tokenizer.pad_token_id or 0, **self._scoring_options())
        totals = [0.0] * len(requests)
        for n, s in zip(owner, scored, strict=True):
            totals[n] += s.logprob
        return totals

    @torch.no_grad()
    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy decoding, one request at a time, re-reading the whole sequence at each token: slow, but it
        goes through the same LoRA-aware forwards as scoring (the cached path needs a merged adapter)."""
        device = next(self.model.parameters()).device
        outputs = []
        for req in requests:
            context, gen_kwargs = req.args
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            ids = self.tokenizer(context, add_special_tokens=False)["input_ids"] or [self.tokenizer.eos_token_id]
            start = len(ids)
            text = ""
            for _ in range(int(gen_kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))):
                inputs = torch.tensor([ids[-self.max_length :]], device=device)  # (1, T)
                with self.autocast or contextlib.nullcontext():
                    logits = self.model(input_ids=inputs, use_cache=False).logits  # (1, T, V)
                token = int(logits[0, -1].argmax())
                if token == self.tokenizer.eos_token_id:
                    break
                ids.append(token)
                text = self.tokenizer.decode(ids[start:])
                if any(stop in text for stop in until):
                    break
            for stop in until:
                text = text.split(stop)[0]
            outputs.append(text)
        return outputs
