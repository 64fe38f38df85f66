"""JSONL lines as both the upload check and the worker read them, so a file the upload accepts is read the
same way when it trains: same lines, same line numbers, same values.

A line ends at b"\\n" and nowhere else: "\\r", U+2028 and U+0085 are characters inside a line (JSON allows
the last two raw inside strings and "\\r" as whitespace between tokens, so CRLF files parse too). A UTF-8
BOM before the first line is skipped. Blank lines are no values, but they are counted, so line numbers
match the client's editor.

Standard library only: the API imports it, and so does the worker, which must not need the API's packages.
"""

import codecs
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHUNK = 1024 * 1024

Value = tuple[int, Any]  # (1-based line number, the line's JSON value)


class JsonlError(ValueError):
    """Why line `line` is not a JSON value."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


class JsonlReader:
    """Feed bytes in chunks of any size, get the JSON value of every complete non-blank line.

    Holds at most one unfinished line between chunks; with `max_line_bytes`, a longer one is an error
    as soon as it is seen, so memory stays bounded whatever the client sends.
    """

    def __init__(self, *, max_line_bytes: int | None = None) -> None:
        self.max_line_bytes = max_line_bytes
        self._pending = b""
        self._line = 0

    def feed(self, chunk: bytes) -> Iterator[Value]:
        lines = (self._pending + chunk).split(b"\n")
        self._pending = lines.pop()
        for raw in lines:
            if (value := self._parse(raw)) is not None:
                yield value
        if self.max_line_bytes is not None and len(self._pending) > self.max_line_bytes:
            raise self._too_long(self._line + 1)

    def finish(self) -> Iterator[Value]:
        """The last line, when the data does not end with a newline."""
        if self._pending and (value := self._parse(self._pending)) is not None:
            yield value
        self._pending = b""

    def _too_long(self, line: int) -> JsonlError:
        return JsonlError(line, f"the line is longer than the limit of {self.max_line_bytes} bytes")

    def _parse(self, raw: bytes) -> Value | None:
        self._line += 1
        line = self._line
        if self.max_line_bytes is not None and len(raw) > self.max_line_bytes:
            raise self._too_long(line)
        if line == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise JsonlError(line, f"invalid UTF-8 at byte {error.start + 1} of the line") from None
        if not text.strip():
            return None
        try:
            return line, json.loads(text)
        except json.JSONDecodeError as error:
            raise JsonlError(line, f"invalid JSON: {error.msg} at column {error.colno}") from None
        except (ValueError, RecursionError):  # e.g. an integer too long to convert, or absurd nesting
            raise JsonlError(line, "invalid JSON") from None


def read_jsonl(path: Path) -> Iterator[Value]:
    """(line number, value) of every non-blank line of the file; errors name the file and the line."""
    reader = JsonlReader()
    try:
        with Path(path).open("rb") as file:
            while chunk := file.read(CHUNK):
                yield from reader.feed(chunk)
        yield from reader.finish()
    except JsonlError as error:
        raise ValueError(f"{path}: {error}") from None
