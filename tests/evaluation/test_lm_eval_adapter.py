"""The lm-evaluation-harness adapter scores requests exactly as a direct forward pass does."""

from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-evaluation-harness (lm_eval) is not installed")
from lm_eval.api.instance import Instance

from worker.evaluation.lm_eval_adapter import MambaLM
from worker.evaluation.model import load_for_eval


def _request(kind: str, *args: object) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


@pytest.fixture(scope="module")
def lm(tiny_mamba: Path) -> MambaLM:
    model, tokenizer, _ = load_for_eval(str(tiny_mamba))
    return MambaLM(model, tokenizer, batch_size=2)


def _direct_logprob(lm: MambaLM, context: str, continuation: str) -> float:
    def encode(text: str) -> list[int]:
        return lm.tokenizer(text, add_special_tokens=False)["input_ids"]

    ctx, cont = encode(context), encode(continuation)
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([ctx + cont]), use_cache=False).logits[0]  # (T, V)
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return sum(float(logprobs[len(ctx) - 1 + i, token]) for i, token in enumerate(cont))


def test_loglikelihood_matches_a_direct_forward(lm: MambaLM) -> None:
    pairs = [("The cat sat on the", " mat"), ("2 + 2 =", " 4"), ("a much longer context, to pad the batch", " ok")]
    results = lm.loglikelihood([_request("loglikelihood", *p) for p in pairs])
    for (context, continuation), (logprob, greedy) in zip(pairs, results, strict=True):
        assert logprob == pytest.approx(_direct_logprob(lm, context, continuation), abs=1e-3)
        assert isinstance(greedy, bool)


def test_rolling_loglikelihood_scores_every_token_once(lm: MambaLM) -> None:
    text = "hello rolling windows"
    (whole,) = lm.loglikelihood_rolling([_request("loglikelihood_rolling", text)])
    (from_eos,) = lm.loglikelihood([_request("loglikelihood", "", text)])
    assert whole == pytest.approx(from_eos[0], abs=1e-3)
    # Short windows condition on less context, so the total changes but stays a sum over all tokens.
    (windowed,) = MambaLM(lm.model, lm.tokenizer, max_length=8).loglikelihood_rolling(
        [_request("loglikelihood_rolling", text)]
    )
    assert windowed != pytest.approx(whole, abs=1e-3) and windowed < 0


def test_generate_until_stops_at_the_stop_string(lm: MambaLM) -> None:
    (text,) = lm.generate_until([_request("generate_until", "abc", {"until": ["\n"], "max_gen_toks": 5})])
    assert isinstance(text, str) and "\n" not in text and len(text.encode()) <= 5
