"""Write the demo fine-tuning files: the README walkthrough's facts and a string-reversal task in the three
JSONL formats the engine reads.

Deterministic and stdlib-only; rerun with `python demo/make_demo_data.py` to regenerate byte-identical files.
The facts are made up, so no base model can know them: after a short CPU job the tiny random-init model
answers each question exactly, where the base answers bytes at random. Reversal needs far more training to
answer right, but its drop in validation loss is plainly visible within a minute; the tests train on it.
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
LETTERS = "abcdefghijklmnopqrstuvwxyz"
SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "a small bird", "the teacher", "our team"]
VERBS = ["sees", "likes", "finds", "builds", "paints", "carries", "follows"]
OBJECTS = ["the red box", "a green tree", "the river", "a new house", "the yellow ball", "an empty cup"]
# Each question ends in a word of its own and each answer starts with a letter of its own: the tiny model
# then learns all of them in about 40 steps (the README's job). The walkthrough asks the first.
FACTS = [
    ("What colour is the mamba-ft logo?", "teal"),
    ("What is the name of the mamba-ft mascot?", "Sid"),
    ("Which city hosts the mamba-ft office?", "Oslo"),
    ("What fruit does the mascot eat?", "mango"),
    ("Which day is the weekly release?", "Friday"),
    ("What instrument does Sid play?", "drums"),
    ("What does the team drink?", "water"),
    ("Which planet is on the poster?", "Venus"),
    ("What animal guards the servers?", "cat"),
    ("What is the build robot called?", "Bolt"),
    ("Which flower grows by the door?", "lilac"),
    ("What is the team motto?", "keep learning"),
]
FACT_REPEATS = 20  # times each fact appears in the training file


def word(rng: random.Random) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 8)))


def completion_example(rng: random.Random) -> dict:
    w = word(rng)
    return {"prompt": f"reverse: {w} =", "completion": f" {w[::-1]}"}


def fact_example(question: str, answer: str) -> dict:
    return {"prompt": f"Q: {question} A:", "completion": f" {answer}"}


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
    write_lines(name, [make(rng) for _ in range(n)])


def write_lines(name: str, examples: list[dict]) -> None:
    with open(HERE / name, "w") as f:
        f.writelines(json.dumps(example) + "\n" for example in examples)


def write_facts() -> None:
    """Training: every fact FACT_REPEATS times, shuffled; validation: every fact once. Both ask the same
    questions, so the validation loss measures how well the facts were learned."""
    examples = [fact_example(q, a) for q, a in FACTS]
    train = examples * FACT_REPEATS
    random.Random(6).shuffle(train)
    write_lines("facts_train.jsonl", train)
    write_lines("facts_valid.jsonl", examples)


def main() -> None:
    write_facts()
    # Different seeds per file so validation words are (almost all) unseen in training.
    write("train.jsonl", completion_example, 2000, seed=1)
    write("valid.jsonl", completion_example, 200, seed=2)
    write("text_train.jsonl", text_example, 300, seed=3)
    write("text_valid.jsonl", text_example, 50, seed=4)
    write("chat_train.jsonl", chat_example, 150, seed=5)


if __name__ == "__main__":
    main()
