"""Write the demo fine-tuning files: a string-reversal task in the three JSONL formats the engine reads.

Deterministic and stdlib-only; rerun with `python demo/make_demo_data.py` to regenerate byte-identical files.
Reversal is learnable by the tiny random-init models within a minute on CPU, so the drop in validation
loss after fine-tuning is plainly visible.
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
LETTERS = "abcdefghijklmnopqrstuvwxyz"
SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "a small bird", "the teacher", "our team"]
VERBS = ["sees", "likes", "finds", "builds", "paints", "carries", "follows"]
OBJECTS = ["the red box", "a green tree", "the river", "a new house", "the yellow ball", "an empty cup"]


def word(rng: random.Random) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 8)))


def completion_example(rng: random.Random) -> dict:
    w = word(rng)
    return {"prompt": f"reverse: {w} =", "completion": f" {w[::-1]}"}


def text_example(rng: random.Random) -> dict:
    sentences = [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}." for _ in range(3)]
    return {"text": " ".join(sentences)}


def chat_example(rng: random.Random) -> dict:
    words = [word(rng) for _ in range(rng.randint(1, 2))]
    messages = [{"role": "system", "content": "You reverse words."}]
    for w in words:
        messages += [{"role": "user", "content": w}, {"role": "assistant", "content": w[::-1]}]
    return {"messages": messages}


def write(name: str, make, n: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(HERE / name, "w") as f:
        f.writelines(json.dumps(make(rng)) + "\n" for _ in range(n))


def main() -> None:
    # Different seeds per file so validation words are (almost all) unseen in training.
    write("train.jsonl", completion_example, 2000, seed=1)
    write("valid.jsonl", completion_example, 200, seed=2)
    write("text_train.jsonl", text_example, 300, seed=3)
    write("text_valid.jsonl", text_example, 50, seed=4)
    write("chat_train.jsonl", chat_example, 150, seed=5)


if __name__ == "__main__":
    main()
