"""Multiple-choice scoring and ICL gain against a model whose log-probabilities are known exactly."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from app.evaluations.shipped_tasks import shipped_task
from worker.engine.tiny_model import byte_tokenizer
from worker.evaluation.multiple_choice import (
    Example,
    evaluate_task,
    fewshot_indices,
    icl_gain_ratios,
    prompt,
    read_task,
)
from worker.evaluation.scoring import encode_pair, score_texts

UNSEEN = -1e4


class SeenTokensModel(nn.Module):
    """p(next) is uniform over the distinct tokens seen so far and ~0 for any other token:
    log p = -log(#seen) for a seen token and about UNSEEN for an unseen one."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the model a device

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False) -> SimpleNamespace:
        seen = nn.functional.one_hot(input_ids, self.vocab).cumsum(dim=1) > 0  # (B, T, V)
        return SimpleNamespace(logits=torch.where(seen, 0.0, UNSEEN))


@pytest.fixture
def tokenizer():
    return byte_tokenizer()


@pytest.fixture
def model(tokenizer) -> SeenTokensModel:
    return SeenTokensModel(len(tokenizer))


# Zero-shot both choices are unseen, a tie, so the first choice wins: example 0 wrong, example 1 right.
# One shot (the other example, solved) puts " a" in the prompt, so " a" wins both: right and right.
TWO = [Example("x", ("b", "a"), 1), Example("y", ("a", "c"), 0)]


def test_scores_are_the_exact_log_probabilities(model, tokenizer) -> None:
    one_shot = prompt(TWO, 0, 1, seed=0)
    assert one_shot == "y a\n\nx"
    scored = score_texts(model, tokenizer, [(one_shot, " a"), (one_shot, " b"), ("x", " b")])
    seen = len(set("y a\n\nx"))  # 5 distinct tokens before the continuation
    assert scored[0].logprob == pytest.approx(-2 * math.log(seen), abs=1e-4)
    assert scored[1].logprob == pytest.approx(-math.log(seen) + UNSEEN, rel=1e-3)
    assert scored[2].logprob == pytest.approx(2 * UNSEEN, rel=1e-3)
    assert [s.n_tokens for s in scored] == [2, 2, 2]


def test_icl_gain_of_hand_computed_two_example_task(model, tokenizer) -> None:
    scores = evaluate_task(model, tokenizer, TWO, [1], task="two", seed=0)
    assert scores.acc == {0: 0.5, 1: 1.0}
    assert scores.acc_norm == {0: 0.5, 1: 1.0}  # one-letter choices: normalising changes nothing
    assert scores.to_dict() == {
        "task": "two",
        "n_examples": 2,
        "acc_0": 0.5,
        "acc_norm_0": 0.5,
        "acc_1": 1.0,
        "acc_norm_1": 1.0,
        "icl_gain_1": 0.5,
    }


def test_acc_norm_divides_by_choice_length(model, tokenizer) -> None:
    # Both continuations pay for one unseen token (the space) and then -log 2 per "x": the sum prefers
    # the short choice, the sum per character the long one, which spreads the unseen cost over 4.
    task = [Example("x", ("xxxx", "x"), 0), Example("x", ("xxxx", "x"), 0)]
    scores = evaluate_task(model, tokenizer, task, [], seed=0)
    assert scores.acc[0] == 0.0 and scores.acc_norm[0] == 1.0


def test_fewshot_examples_are_seeded_others_and_nested() -> None:
    for index in range(50):
        six = fewshot_indices(50, index, 6, seed=3)
        assert index not in six and len(set(six)) == 6
        # 50 examples: random.sample would switch algorithms between 5 and 6 picks and break nesting.
        assert fewshot_indices(50, index, 5, seed=3) == six[:5]
        assert fewshot_indices(50, index, 6, seed=3) == six
    assert any(fewshot_indices(50, i, 5, seed=3) != fewshot_indices(50, i, 5, seed=4) for i in range(50))
    assert sorted(fewshot_indices(4, 2, 3, seed=0)) == [0, 1, 3]
    with pytest.raises(ValueError, match="at least 10 examples"):
        fewshot_indices(9, 0, 9, seed=0)


def test_trailing_context_space_moves_into_the_continuation(tokenizer) -> None:
    assert encode_pair(tokenizer, "ab ", "c") == encode_pair(tokenizer, "ab", " c")
    context, continuation = encode_pair(tokenizer, "", "hi")
    assert context == [tokenizer.eos_token_id] and len(continuation) == 2


def test_icl_gain_ratio_is_null_when_the_reference_gained_nothing() -> None:
    model = [{"task": "a", "icl_gain_1": 0.2, "icl_gain_3": 0.3}, {"task": "b", "icl_gain_1": 0.1}]
    reference = [{"task": "a", "icl_gain_1": 0.1, "icl_gain_3": 0.0}]
    assert icl_gain_ratios(model, reference) == {
        "a": {"icl_gain_ratio_1": pytest.approx(2.0), "icl_gain_ratio_3": None}
    }


def test_read_task_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    good = json.dumps({"context": "c", "choices": ["a", "b"], "answer": 1})
    path.write_text(good + "\n" + json.dumps({"context": "c", "choices": ["a", "b"], "answer": 2}) + "\n")
    with pytest.raises(ValueError, match=r"t\.jsonl: line 2"):
        read_task(path)


def test_read_task_reads_what_the_upload_would_accept(tmp_path: Path) -> None:
    # A BOM, CRLF line ends and raw U+2028 / U+0085 inside strings, as json.dumps(ensure_ascii=False) writes.
    records = [{"context": f"c{i}\u2028x", "choices": ["a\u0085", "b"], "answer": i % 2} for i in range(3)]
    path = tmp_path / "t.jsonl"
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in records)
    path.write_bytes(b"\xef\xbb\xbf" + lines.encode())

    examples = read_task(path)

    assert [(e.context, e.choices, e.answer) for e in examples] == [
        (r["context"], tuple(r["choices"]), r["answer"]) for r in records
    ]


def test_shipped_tasks_are_valid_and_small(tasks_dir: Path) -> None:
    total = 0
    for name in ("lookup", "arith", "pattern_copy"):
        assert len(read_task(shipped_task(name))) >= 200
        train = [json.loads(line) for line in (tasks_dir / f"{name}_train.jsonl").read_text().splitlines()]
        assert all(set(r) == {"prompt", "completion"} for r in train)
        total += shipped_task(name).stat().st_size + (tasks_dir / f"{name}_train.jsonl").stat().st_size
    assert total < 200_000
