"""Multiple-choice accuracy at 0 and k shots, and the in-context-learning gain between them.

A task is JSONL with lines `{"context": str, "choices": [str, ...], "answer": int}`. Scored the way
lm-evaluation-harness scores multiple choice: each choice's score is the summed log-probability of
" " + choice after the prompt; `acc` picks the highest score, `acc_norm` the highest score per character
of the choice. A k-shot prompt puts k other examples of the same task first, each as
`context + " " + correct choice`, joined by blank lines. The ICL gain at k is acc_k - acc_0
(Halloran et al., "Mamba state-space models are Lyapunov-stable learners", arXiv 2406.00209).
"""

import contextlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from app.files.jsonl import read_jsonl
from worker.engine.spec import EngineFailure
from worker.evaluation.scoring import score_texts

FEWSHOT_SEPARATOR = "\n\n"
TARGET_DELIMITER = " "


@dataclass(frozen=True)
class Example:
    context: str
    choices: tuple[str, ...]
    answer: int

    @property
    def solved(self) -> str:
        return self.context + TARGET_DELIMITER + self.choices[self.answer]


@dataclass(frozen=True)
class TaskScores:
    task: str
    n_examples: int
    acc: dict[int, float]  # shots -> accuracy; always has 0
    acc_norm: dict[int, float]

    def icl_gain(self, shots: int) -> float:
        return self.acc[shots] - self.acc[0]

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON: acc_0, acc_norm_0, then acc_k, acc_norm_k and icl_gain_k for each k > 0."""
        out: dict[str, Any] = {"task": self.task, "n_examples": self.n_examples}
        for k in sorted(self.acc):
            out[f"acc_{k}"] = self.acc[k]
            out[f"acc_norm_{k}"] = self.acc_norm[k]
            if k:
                out[f"icl_gain_{k}"] = self.icl_gain(k)
        return out


class InvalidTaskFile(EngineFailure, ValueError):
    """A task file that is not multiple-choice lines, or has too few examples for the shots asked."""

    code = "invalid_task_file"


def read_task(path: Path) -> list[Example]:
    """Parse and check a task file; errors (InvalidTaskFile) name the line."""
    try:
        return _read_task(path)
    except ValueError as error:  # ours or the JSONL reader's, naming the file and line
        raise InvalidTaskFile(str(error)) from None


def _read_task(path: Path) -> list[Example]:
    examples = []
    for lineno, record in read_jsonl(path):
        try:
            choices = record["choices"]
            answer = record["answer"]
            ok = isinstance(record["context"], str) and isinstance(choices, list) and len(choices) >= 2
            ok = ok and all(isinstance(c, str) and c for c in choices)
            ok = ok and type(answer) is int and 0 <= answer < len(choices)  # not a bool
        except (KeyError, TypeError):
            ok = False
        if not ok:
            raise ValueError(
                f'{path}: line {lineno}: expected {{"context": str, "choices": [2+ non-empty str], "answer": index}}'
            )
        examples.append(Example(record["context"], tuple(choices), answer))
    if len(examples) < 2:
        raise ValueError(f"{path}: a task needs at least 2 examples (few-shot examples come from the others)")
    return examples


def fewshot_indices(n_examples: int, index: int, k: int, seed: int) -> list[int]:
    """k distinct examples other than `index`, fixed by (seed, index); the k-shot set is a prefix of
    the (k+1)-shot set, so accuracies at different k differ by the added shots only."""
    if k > n_examples - 1:
        raise InvalidTaskFile(f"{k} shots need at least {k + 1} examples, the task has {n_examples}")
    rng = random.Random(seed * 1_000_003 + index)
    # Draw with rejection rather than rng.sample, whose algorithm (so its picks) changes with k.
    picked: list[int] = []
    while len(picked) < k:
        j = rng.randrange(n_examples - 1)
        j += j >= index  # skip over `index` itself
        if j not in picked:
            picked.append(j)
    return picked


def prompt(examples: list[Example], index: int, k: int, seed: int) -> str:
    shots = [examples[j].solved for j in fewshot_indices(len(examples), index, k, seed)]
    return FEWSHOT_SEPARATOR.join([*shots, examples[index].context])


def evaluate_task(
    model: nn.Module,
    tokenizer: Any,
    examples: list[Example],
    shots: list[int],
    *,
    task: str = "task",
    seed: int = 1234,
    limit: int | None = None,
    batch_size: int = 16,
    autocast: contextlib.AbstractContextManager | None = None,
) -> TaskScores:
    """Accuracy at 0 shots and at every k in `shots` on the first `limit` examples (all by default);
    few-shot examples come from the whole task."""
    evaluated = range(min(limit or len(examples), len(examples)))
    acc, acc_norm = {}, {}
    for k in sorted({0, *shots}):
        pairs = []
        for i in evaluated:
            context = prompt(examples, i, k, seed)
            pairs += [(context, TARGET_DELIMITER + choice) for choice in examples[i].choices]
        scored = score_texts(model, tokenizer, pairs, batch_size=batch_size, autocast=autocast)
        hits = hits_norm = offset = 0
        for i in evaluated:
            choices = examples[i].choices
            logprobs = [s.logprob for s in scored[offset : offset + len(choices)]]
            offset += len(choices)
            hits += _argmax(logprobs) == examples[i].answer
            hits_norm += _argmax([lp / len(c) for lp, c in zip(logprobs, choices, strict=True)]) == examples[i].answer
        acc[k], acc_norm[k] = hits / len(evaluated), hits_norm / len(evaluated)
    return TaskScores(task, len(evaluated), acc, acc_norm)


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)  # first of equal maxima, like numpy


def icl_gain_ratios(model_tasks: list[dict[str, Any]], reference_tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """The paper's headline number per task and k: icl_gain_k(model) / icl_gain_k(reference), from two
    `TaskScores.to_dict` lists; None where the reference gained nothing (the ratio is undefined)."""
    reference = {t["task"]: t for t in reference_tasks}
    ratios: dict[str, Any] = {}
    for scores in model_tasks:
        ref = reference.get(scores["task"])
        if ref is None:
            continue
        gains = [key for key in scores if key.startswith("icl_gain_") and key in ref]
        ratios[scores["task"]] = {
            key.replace("icl_gain_", "icl_gain_ratio_"): (scores[key] / ref[key] + 0.0 if ref[key] else None)  # no -0.0
            for key in gains
        }
    return ratios
