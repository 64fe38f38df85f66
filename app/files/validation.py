"""Streaming validation of JSONL training files: memory bounded by one line, the first bad line wins.

A line (split and parsed by app/files/jsonl.py, as the worker reads it) is one JSON object in exactly
one of three formats, the same for the whole file: `{"text"}`, `{"prompt", "completion"}` or
`{"messages": [{"role", "content"}, ...]}`, with something to train: a non-empty text, a non-empty
completion, or at least one non-empty assistant message.
"""

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from app.errors import ApiError
from app.files.jsonl import CHUNK, JsonlError, JsonlReader

ROLES = ("system", "user", "assistant")
# Checked in this order, so a record with "messages" and "text" is reported against the first.
FORMATS: dict[str, frozenset[str]] = {
    "messages": frozenset({"messages"}),
    "prompt_completion": frozenset({"prompt", "completion"}),
    "text": frozenset({"text"}),
}
# The key whose text trains, for the formats with one: it must not be empty, or the line teaches nothing.
TRAINED_KEY = {"prompt_completion": "completion", "text": "text"}
NOTHING_TO_TRAIN = "there is nothing to train on"


@dataclass(frozen=True)
class ScannedFile:
    size: int
    sha256: str
    format: str
    line_count: int  # training examples, i.e. non-blank lines


class BadRecord(ValueError):
    """Why one JSON value is not a training example (the caller adds the line number)."""


def invalid_training_file(line: int, reason: str) -> ApiError:
    return ApiError(400, "invalid_training_file", f"Line {line}: {reason}", param="file")


def file_too_large(limit: int) -> ApiError:
    return ApiError(413, "file_too_large", f"The file exceeds the upload limit of {limit} bytes", param="file")


def scan_upload(stream: BinaryIO, *, max_bytes: int, max_line_bytes: int) -> ScannedFile:
    """Read `stream` to its end in chunks, validating every line; raises on the first problem."""
    scanner = JsonlScanner(max_bytes=max_bytes, max_line_bytes=max_line_bytes)
    while chunk := stream.read(CHUNK):
        scanner.feed(chunk)
    return scanner.finish()


class JsonlScanner:
    """Feed chunks of any size; holds at most one unfinished line (≤ max_line_bytes) between chunks."""

    def __init__(self, *, max_bytes: int, max_line_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._reader = JsonlReader(max_line_bytes=max_line_bytes)
        self._digest = hashlib.sha256()
        self._size = 0
        self._examples = 0
        self._format: str | None = None
        self._format_line = 0

    def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self.max_bytes:
            raise file_too_large(self.max_bytes)
        self._digest.update(chunk)
        self._check(self._reader.feed(chunk))

    def finish(self) -> ScannedFile:
        self._check(self._reader.finish())
        if self._format is None:
            raise invalid_training_file(1, "the file holds no training examples (it is empty or blank)")
        return ScannedFile(
            size=self._size, sha256=self._digest.hexdigest(), format=self._format, line_count=self._examples
        )

    def _check(self, values: Iterator[tuple[int, Any]]) -> None:
        try:
            for line, value in values:
                self._check_record(line, value)
        except JsonlError as error:
            raise invalid_training_file(error.line, error.reason) from None

    def _check_record(self, line: int, value: Any) -> None:
        try:
            found = record_format(value)
        except BadRecord as error:
            raise invalid_training_file(line, str(error)) from None
        if self._format is None:
            self._format, self._format_line = found, line
        elif found != self._format:
            raise invalid_training_file(
                line,
                f"the {found} format differs from the {self._format} format of line {self._format_line};"
                " all lines of a file must use one format",
            )
        self._examples += 1


def record_format(record: Any) -> str:
    """Which format `record` is in; raises BadRecord naming the first problem."""
    if not isinstance(record, dict):
        raise BadRecord(f"expected a JSON object, got {_json_type(record)}")
    name = _detect_format(set(record))
    if name == "messages":
        _check_messages(record["messages"])
    else:
        for key in sorted(FORMATS[name]):
            _check_string(record[key], key)
        if record[TRAINED_KEY[name]] == "":
            raise BadRecord(f'"{TRAINED_KEY[name]}" is empty: {NOTHING_TO_TRAIN}')
    return name


def _detect_format(keys: set[str]) -> str:
    for name, required in FORMATS.items():
        if keys & required:
            _check_keys(keys, required, where="the object")
            return name
    raise BadRecord(
        f'expected an object with "text", with "prompt" and "completion", or with "messages"; got keys {_names(keys)}'
    )


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise BadRecord('"messages" must be a non-empty array')
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRecord(f"{where} must be an object, got {_json_type(message)}")
        _check_keys(set(message), frozenset({"role", "content"}), where=where)
        if message["role"] not in ROLES:
            raise BadRecord(f"{where}.role must be one of {', '.join(ROLES)}; got {_short(message['role'])}")
        _check_string(message["content"], f"{where}.content")
    assistant = [m["content"] for m in messages if m["role"] == "assistant"]
    if not assistant:
        raise BadRecord('"messages" has no assistant message to train on')
    if not any(assistant):
        raise BadRecord(f"every assistant message is empty: {NOTHING_TO_TRAIN}")


def _check_keys(keys: set[str], required: frozenset[str], *, where: str) -> None:
    if missing := required - keys:
        raise BadRecord(f"{where} is missing the key(s) {_names(missing)}")
    if extra := keys - required:
        raise BadRecord(f"{where} has unexpected key(s) {_names(extra)}")


def _check_string(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise BadRecord(f'"{where}" must be a string, got {_json_type(value)}')
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # JSON allows "\ud800" escapes, but a lone surrogate is no text a tokenizer can read.
        raise BadRecord(f'"{where}" contains an unpaired UTF-16 surrogate escape') from None


def _json_type(value: Any) -> str:
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


def _short(value: Any, limit: int = 40) -> str:
    """A client-supplied value, quoted and cut short enough to sit in an error message."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _names(keys: set[str] | frozenset[str], shown: int = 5) -> str:
    names = sorted(keys)
    listed = ", ".join(_short(k) for k in names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")
