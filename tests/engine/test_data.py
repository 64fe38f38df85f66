"""Data formats, loss masks, packing and deterministic batching."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from worker.engine.data import (
    IGNORE,
    DataPosition,
    batches,
    load_blocks,
    pack,
    steps_per_epoch,
    tokenize_record,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_mamba):
    return AutoTokenizer.from_pretrained(tiny_mamba)


def trained_text(tokenizer, record) -> tuple[str, str]:
    """(the whole example, only its trained tokens) decoded, special tokens included."""
    ids, trained = tokenize_record(record, tokenizer)
    return tokenizer.decode(ids), tokenizer.decode([i for i, t in zip(ids, trained, strict=True) if t])


def test_prompt_completion_trains_only_the_completion_and_eos(tokenizer):
    ids, trained = tokenize_record({"prompt": "ab =", "completion": " ba"}, tokenizer)
    # Byte-level tokenizer: one token per byte, so the mask is countable by hand.
    assert ids == tokenizer("ab = ba", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert trained == [False] * 4 + [True] * 4


def test_text_trains_every_token(tokenizer):
    ids, trained = tokenize_record({"text": "hi"}, tokenizer)
    assert len(ids) == 3 and ids[-1] == tokenizer.eos_token_id and all(trained)


def test_chat_fixed_template_trains_only_assistant_turns(tokenizer):
    messages = [
        {"role": "system", "content": "Reverse."},
        {"role": "user", "content": "abc"},
        {"role": "assistant", "content": "cba"},
        {"role": "user", "content": "xy"},
        {"role": "assistant", "content": "yx"},
    ]
    whole, trained = trained_text(tokenizer, {"messages": messages})
    eos = tokenizer.eos_token
    assert whole == f"system: Reverse.\nuser: abc\nassistant: cba{eos}user: xy\nassistant: yx{eos}"
    assert trained == f"cba{eos}yx{eos}"


def test_chat_uses_the_tokenizers_own_template_when_it_has_one(tiny_mamba):
    tokenizer = AutoTokenizer.from_pretrained(tiny_mamba)
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    messages = [{"role": "user", "content": "abc"}, {"role": "assistant", "content": "cba"}]
    whole, trained = trained_text(tokenizer, {"messages": messages})
    assert whole == f"<user>abc</s><assistant>cba</s>{tokenizer.eos_token}"
    assert trained == f"cba</s>{tokenizer.eos_token}"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "line 1: invalid JSON"),
        (json.dumps({"prompt": "only a prompt"}), "line 1: expected"),
        (json.dumps({"messages": [{"role": "user", "content": "hi"}]}), "line 1: a conversation needs an assistant"),
    ],
)
def test_bad_lines_are_refused_with_their_position(tmp_path, tokenizer, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match=message):
        load_blocks(path, tokenizer, 16)


def test_a_file_with_nothing_to_train_is_refused_naming_the_file(tmp_path, tokenizer):
    path = tmp_path / "empty_completions.jsonl"
    path.write_text(json.dumps({"prompt": "reverse: ab =", "completion": ""}) + "\n" + json.dumps({"text": ""}) + "\n")
    with pytest.raises(ValueError, match=r"empty_completions.jsonl: zero trainable tokens in its 2 example\(s\)"):
        load_blocks(path, tokenizer, 16)


def test_a_prompt_longer_than_max_seq_len_still_trains_its_completion(tmp_path, tokenizer):
    # Examples are packed into one stream, never truncated: the completion lands in a later block.
    path = tmp_path / "long_prompt.jsonl"
    path.write_text(json.dumps({"prompt": "x" * 40, "completion": " ba"}) + "\n")
    blocks = load_blocks(path, tokenizer, 16)
    assert len(blocks.inputs) == 3
    assert int((blocks.targets != IGNORE).sum()) == len(" ba") + 1  # the completion and its EOS


def test_the_engine_reads_training_files_without_the_api_packages(tmp_path):
    # A fresh interpreter in which the API's packages cannot be imported, as on a bare GPU box.
    probe = """
import sys
class NoApiPackages:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"fastapi", "starlette", "sqlalchemy", "pydantic"}:
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, NoApiPackages())
import worker.engine.data, worker.evaluation.multiple_choice
"""
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(root)}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_packing_keeps_targets_aligned_across_examples_and_blocks():
    # Two examples, 7 tokens in all; only the second example's last two tokens train.
    blocks = pack([([1, 2, 3], [True] * 3), ([4, 5, 6, 7], [False, False, True, True])], max_seq_len=4, pad_id=0)
    assert blocks.inputs.tolist() == [[1, 2, 3, 4], [5, 6, 7, 0]]
    # Target t is the next stream token when that token trains: 2, 3 (example 1), 6, 7 (example 2).
    assert blocks.targets.tolist() == [[2, 3, IGNORE, IGNORE], [6, 7, IGNORE, IGNORE]]
    assert blocks.lengths.tolist() == [4, 3]
    # Each input's example, from 0 in each block; the padding is one of its own.
    assert blocks.documents.tolist() == [[0, 0, 0, 1], [0, 0, 0, 1]]


def test_an_examples_last_input_predicts_nothing_of_the_next_example():
    # Both examples train every token, yet 3 -> 4 crosses examples: it trains as neither alone would.
    blocks = pack([([1, 2, 3], [True] * 3), ([4, 5, 6], [True] * 3)], max_seq_len=5, pad_id=0)
    assert blocks.inputs.tolist() == [[1, 2, 3, 4, 5]]
    assert blocks.targets.tolist() == [[2, 3, IGNORE, 5, 6]]
    assert blocks.documents.tolist() == [[0, 0, 0, 1, 1]]


def test_batches_are_seeded_per_epoch_and_replay_from_any_position():
    blocks = pack([(list(range(1, 42)), [True] * 41)], max_seq_len=4, pad_id=0)  # 10 blocks
    assert steps_per_epoch(blocks, 3) == 4  # the last batch of an epoch is short
    full = list(batches(blocks, 3, n_epochs=2, seed=7))
    first_ids = [b[1].inputs[:, 0].tolist() for b in full]  # one id per block identifies it
    assert [b[1].inputs[:, 0].tolist() for b in batches(blocks, 3, n_epochs=2, seed=7)] == first_ids
    epochs = [sorted(i for batch in first_ids[e * 4 : (e + 1) * 4] for i in batch) for e in (0, 1)]
    assert epochs[0] == epochs[1] == sorted(blocks.inputs[:, 0].tolist())  # each epoch sees every block once
    assert first_ids[:4] != first_ids[4:]  # in a different order
    assert [b[1].inputs[:, 0].tolist() for b in batches(blocks, 3, n_epochs=2, seed=8)] != first_ids
    tail = list(batches(blocks, 3, n_epochs=2, seed=7, start=DataPosition(epoch=1, batch=1)))
    assert [b[0] for b in tail] == [b[0] for b in full[5:]]
    for a, b in zip(tail, full[5:], strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a[1], b[1], strict=True)) and a[2] == b[2]


def test_demo_files_load_in_all_three_formats(tokenizer, demo_dir):
    for name in ("train.jsonl", "text_valid.jsonl", "chat_train.jsonl"):
        blocks = load_blocks(demo_dir / name, tokenizer, 64)
        assert (blocks.targets != IGNORE).sum() > 0
