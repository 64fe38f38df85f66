"""Write the shipped multiple-choice evaluation tasks and a matching fine-tuning file for each.

Deterministic and stdlib-only: `python demo/tasks/make_tasks.py` rewrites byte-identical files.

Each task is `app/evaluations/tasks/<name>.jsonl` with lines `{"context", "choices", "answer"}` (scored
like lm-evaluation-harness: the log-likelihood of " " + choice after the context) and
`demo/tasks/<name>_train.jsonl` with `{"prompt": context, "completion": " " + correct choice}`, so
fine-tuning on the train file teaches exactly what the task measures:
- lookup: a fixed table of made-up words -> colours, a closed-book "fact" task. Train and task share the
  table (it is knowledge to memorise); few-shot examples sometimes show the queried key, which an
  in-context learner can copy.
- arith: single-digit addition facts, distractors are nearby sums; also memorised, as a fact table.
- pattern_copy: continue a repeated letter pattern ("pattern: kq kq kq" -> "kq"); distractors use the
  same letters, so only copying from the context helps. Train and task use different patterns.
The tiny random-init mamba-tiny scores at or below chance on all three. LoRA on the train file (batch
16 x 64 tokens, lr 1e-2) took it, on 100 examples at 0 shots: lookup 0.27 -> 0.80 in 9 steps, arith
0.20 -> 0.73 in 100 steps, pattern_copy 0.01 -> 0.80 in 80 steps (copying patterns unseen in training).
"""

import json
import random
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).parent
SHIPPED = HERE.parents[1] / "app" / "evaluations" / "tasks"  # inside the package, which serves them by name
LETTERS = "abcdefghijklmnopqrstuvwxyz"
COLOURS = ["red", "blue", "green", "black", "white", "pink", "gold", "gray"]
N_CHOICES = 4

Example = tuple[str, list[str], int]  # context, choices, index of the correct choice


def _shuffled_choices(rng: random.Random, correct: str, distractors: list[str]) -> tuple[list[str], int]:
    choices = [correct, *rng.sample(distractors, N_CHOICES - 1)]
    rng.shuffle(choices)
    return choices, choices.index(correct)


def _made_up_word(rng: random.Random) -> str:
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    return "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(2)) + rng.choice(consonants)


def _lookup_table() -> dict[str, str]:
    rng = random.Random(100)
    keys: list[str] = []
    while len(keys) < 16:
        key = _made_up_word(rng)
        if key not in keys:
            keys.append(key)
    return {key: rng.choice(COLOURS) for key in keys}


LOOKUP = _lookup_table()


def lookup(rng: random.Random) -> Example:
    key = rng.choice(sorted(LOOKUP))
    correct = LOOKUP[key]
    choices, answer = _shuffled_choices(rng, correct, [c for c in COLOURS if c != correct])
    return f"lookup: {key} =", choices, answer


def arith(rng: random.Random) -> Example:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    total = a + b
    near = [str(total + d) for d in (-3, -2, -1, 1, 2, 3) if total + d >= 0]
    choices, answer = _shuffled_choices(rng, str(total), near)
    return f"{a} + {b} =", choices, answer


def pattern_copy(rng: random.Random) -> Example:
    unit = "".join(rng.sample(LETTERS, rng.randint(2, 3)))
    # Other orders and a doubled letter: the same letters, so letter frequencies give nothing away.
    variants = {"".join(rng.sample(unit, len(unit))) for _ in range(20)} | {unit[0] * len(unit), unit[-1] * len(unit)}
    variants.discard(unit)
    choices, answer = _shuffled_choices(rng, unit, sorted(variants))
    return f"pattern: {' '.join([unit] * rng.randint(2, 4))}", choices, answer


def write_task(name: str, make: Callable[[random.Random], Example], n: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(SHIPPED / f"{name}.jsonl", "w") as f:
        for _ in range(n):
            context, choices, answer = make(rng)
            f.write(json.dumps({"context": context, "choices": choices, "answer": answer}) + "\n")


def write_train(name: str, make: Callable[[random.Random], Example], n: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(HERE / f"{name}_train.jsonl", "w") as f:
        for _ in range(n):
            context, choices, answer = make(rng)
            f.write(json.dumps({"prompt": context, "completion": f" {choices[answer]}"}) + "\n")


TASKS: dict[str, Callable[[random.Random], Example]] = {"lookup": lookup, "arith": arith, "pattern_copy": pattern_copy}


def main() -> None:
    for i, (name, make) in enumerate(TASKS.items()):
        # Separate seeds: for pattern_copy that keeps the evaluated patterns (mostly) unseen in training.
        write_task(name, make, 300, seed=10 + i)
        write_train(name, make, 400, seed=20 + i)


if __name__ == "__main__":
    main()
