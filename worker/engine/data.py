"""Training data: read JSONL, tokenize with a loss mask, pack into fixed-length blocks, batch deterministically.

Lines are read by app/files/jsonl.py, the reader the upload check uses, so they split and number alike.

Three line formats:
- `{"text": ...}`: every token is trained.
- `{"prompt": ..., "completion": ...}`: only the completion (and the closing EOS) is trained.
- `{"messages": [{"role", "content"}, ...]}`: only the assistant turns are trained. With a tokenizer that
  has a `chat_template`, that template renders the conversation. Otherwise this fixed template does:
      system/user turn:  "{role}: {content}\n"             (not trained)
      assistant turn:    "assistant: " + "{content}<eos>"  (only "{content}<eos>" trained)
  so at inference a prompt ends with "assistant: " and generation stops at EOS (`chat_prompt`).
Every example ends with EOS. Examples are concatenated into one stream and cut into blocks of
`max_seq_len` inputs; each block's targets are the next tokens of the stream, so the loss mask stays
aligned across example and block boundaries. Examples packed together stay apart: each block says which
example (document) each input belongs to, the model's mixers reset their state where one starts, and
an example's last input predicts nothing (its target, the next example's first token, is IGNORE), so an
example's loss is what it would be alone. An example cut by a block boundary continues in the next
block as a document of its own, from a fresh state.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from app.files.jsonl import read_jsonl
from worker.engine.spec import InvalidDataFile

IGNORE = -100  # target id that carries no loss (cross_entropy's ignore_index)

Piece = tuple[list[int], bool]  # token ids, whether they are trained
ASSISTANT_PREFIX = "assistant: "  # what opens an assistant turn in the fixed template


@dataclass(frozen=True)
class Blocks:
    inputs: torch.Tensor  # (N, T) int64 token ids; the last block is padded
    targets: torch.Tensor  # (N, T) int64 next-token ids, IGNORE where untrained or padding
    lengths: torch.Tensor  # (N,) real (non-padding) inputs per block
    # (N, T) int32: the document each input belongs to, counted from 0 in each block (non-decreasing;
    # padding is a document of its own): mamba-ssm's `seq_idx`.
    documents: torch.Tensor


class Batch(NamedTuple):
    """What one step trains on, rows of Blocks: inputs, targets (B, T) int64 and documents (B, T) int32."""

    inputs: torch.Tensor
    targets: torch.Tensor
    documents: torch.Tensor

    def to(self, device: torch.device) -> "Batch":
        return Batch(*(t.to(device) for t in self))


@dataclass(frozen=True)
class DataPosition:
    """Where the data stream stands: the next batch to train is batch `batch` of epoch `epoch`."""

    epoch: int = 0
    batch: int = 0


def _encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _template_pieces(messages: list[dict[str, str]], tokenizer: Any) -> list[Piece]:
    """Render with the tokenizer's own chat template, one message at a time; each render must extend
    the previous one, so the text added by an assistant turn is exactly what is trained."""
    pieces: list[Piece] = []
    done = ""

    def extend(text: str, trained: bool) -> None:
        nonlocal done
        if not text.startswith(done):
            raise ValueError("the tokenizer's chat_template does not render conversations incrementally")
        pieces.append((_encode(tokenizer, text[len(done) :]), trained))
        done = text

    for i, message in enumerate(messages):
        assistant = message["role"] == "assistant"
        if assistant:  # the generation prompt ("<|assistant|>\n" or so) belongs to the untrained side
            extend(tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True), False)
        extend(tokenizer.apply_chat_template(messages[: i + 1], tokenize=False), assistant)
    return pieces


def _chat_pieces(messages: list[dict[str, str]], tokenizer: Any) -> list[Piece]:
    if getattr(tokenizer, "chat_template", None):
        return _template_pieces(messages, tokenizer)
    pieces: list[Piece] = []
    for message in messages:
        if message["role"] == "assistant":
            pieces.append((_encode(tokenizer, ASSISTANT_PREFIX), False))
            pieces.append(([*_encode(tokenizer, message["content"]), tokenizer.eos_token_id], True))
        else:
            pieces.append((_encode(tokenizer, f"{message['role']}: {message['content']}\n"), False))
    return pieces


def chat_prompt(messages: list[dict[str, str]], tokenizer: Any) -> list[int]:
    """A conversation to answer as token ids: rendered as training renders `messages`, then the opening of
    an assistant turn, so a model tuned on chat data answers in kind (and ends its turn with EOS)."""
    if getattr(tokenizer, "chat_template", None):
        return _encode(tokenizer, tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    pieces = _chat_pieces(messages, tokenizer)
    return [i for piece, _ in pieces for i in piece] + _encode(tokenizer, ASSISTANT_PREFIX)


def _check_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    for m in messages:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise ValueError("each message needs string 'role' and 'content'")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("a conversation needs an assistant message to train on")
    return messages


def tokenize_record(record: dict[str, Any], tokenizer: Any) -> tuple[list[int], list[bool]]:
    """One example as token ids and a same-length trained mask, ending with EOS."""
    if isinstance(record.get("text"), str):
        pieces = [(_encode(tokenizer, record["text"]), True)]
    elif isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
        pieces = [(_encode(tokenizer, record["prompt"]), False), (_encode(tokenizer, record["completion"]), True)]
    elif "messages" in record:
        pieces = _chat_pieces(_check_messages(record["messages"]), tokenizer)
    else:
        raise ValueError("expected {'text'}, {'prompt', 'completion'} or {'messages'}")
    ids = [i for piece, _ in pieces for i in piece]
    trained = [t for piece, t in pieces for _ in piece]
    if not ids or ids[-1] != tokenizer.eos_token_id:  # EOS is trained when the example ends trained
        ids.append(tokenizer.eos_token_id)
        trained.append(trained[-1] if trained else False)
    return ids, trained


def pack(examples: list[tuple[list[int], list[bool]]], max_seq_len: int, pad_id: int) -> Blocks:
    """Concatenate examples into one stream and cut it into blocks of `max_seq_len` inputs."""
    stream = torch.tensor([i for ids, _ in examples for i in ids], dtype=torch.long)  # (L,)
    trained = torch.tensor([t for _, mask in examples for t in mask], dtype=torch.bool)  # (L,)
    labels = torch.where(trained, stream, IGNORE)  # (L,)
    sizes = torch.tensor([len(ids) for ids, _ in examples], dtype=torch.long)
    example_of = torch.repeat_interleave(torch.arange(len(examples)), sizes)  # (L,)
    T = max_seq_len
    n = max(1, -(-(len(stream) - 1) // T))  # blocks needed to predict every token after the first
    # Pad to n*T + 1 so that inputs are stream[k*T : (k+1)*T] and targets are labels shifted by one.
    padded_ids = torch.full((n * T + 1,), pad_id, dtype=torch.long)
    padded_labels = torch.full((n * T + 1,), IGNORE, dtype=torch.long)
    padded_docs = torch.full((n * T + 1,), len(examples), dtype=torch.long)
    padded_ids[: len(stream)], padded_labels[: len(stream)], padded_docs[: len(stream)] = stream, labels, example_of
    # An example's last input would predict the next example's first token: a target across documents.
    targets = padded_labels[1:].masked_fill(padded_docs[1:] != padded_docs[:-1], IGNORE).view(n, T)
    documents = padded_docs[:-1].view(n, T)
    lengths = (len(stream) - torch.arange(n) * T).clamp(max=T)  # (N,)
    return Blocks(padded_ids[:-1].view(n, T), targets, lengths, (documents - documents[:, :1]).int())


def load_blocks(path: Path, tokenizer: Any, max_seq_len: int) -> Blocks:
    """The file's examples, packed; raises InvalidDataFile naming the file (and line) when it cannot train."""
    examples = []
    try:
        for lineno, record in read_jsonl(path):
            try:
                if not isinstance(record, dict):
                    raise ValueError("expected a JSON object")
                examples.append(tokenize_record(record, tokenizer))
            except ValueError as e:
                raise ValueError(f"{path}: line {lineno}: {e}") from None
    except ValueError as e:  # ours above, or the reader's (which names the file and line too)
        raise InvalidDataFile(str(e)) from None
    blocks = pack(examples, max_seq_len, tokenizer.pad_token_id)
    # Uploads refuse lines with nothing to train, but a file stored without that check, or a tokenizer that
    # maps a text to no tokens, still gets here; it would train nothing and "succeed" with a loss of 0.
    if not (blocks.targets != IGNORE).any():
        raise InvalidDataFile(
            f"{path}: zero trainable tokens in its {len(examples)} example(s) at max_seq_len {max_seq_len}:"
            " no completion, text or assistant message has a token to train on"
        )
    return blocks


def steps_per_epoch(blocks: Blocks, batch_size: int) -> int:
    return -(-len(blocks.inputs) // batch_size)


def batches(
    blocks: Blocks, batch_size: int, n_epochs: int, seed: int, start: DataPosition = DataPosition()
) -> Iterator[tuple[DataPosition, Batch, int]]:
    """Yield (position, batch, real tokens) from `start` to the end of the last epoch.
    Each epoch's order depends only on seed + epoch, so resuming at a position replays exactly."""
    per_epoch = steps_per_epoch(blocks, batch_size)
    for epoch in range(start.epoch, n_epochs):
        order = torch.randperm(len(blocks.inputs), generator=torch.Generator().manual_seed(seed + epoch))
        for b in range(start.batch if epoch == start.epoch else 0, per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            batch = Batch(blocks.inputs[idx], blocks.targets[idx], blocks.documents[idx])
            yield DataPosition(epoch, b), batch, int(blocks.lengths[idx].sum())


def next_position(position: DataPosition, per_epoch: int) -> DataPosition:
    if position.batch + 1 < per_epoch:
        return DataPosition(position.epoch, position.batch + 1)
    return DataPosition(position.epoch + 1, 0)
