"""What every client command takes (the server, the key, `--json`) and how it prints results and errors."""

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from app.client.http import Client, ClientError

Url = Annotated[str, typer.Option("--url", envvar="MAMBAFT_URL", help="The server's address (its root, without /v1).")]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="MAMBAFT_API_KEY", help="An API key (`mambaft create-key`).", show_default=False),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON (one object per line) instead of text.")]
DEFAULT_URL = "http://127.0.0.1:8000"


@contextmanager
def connect(url: str, api_key: str | None, as_json: bool) -> Iterator[Client]:
    """A client for one command. A refused request or an unreachable server ends the command with exit
    status 1, saying why: on stderr, or with `--json` as the server's error object on stdout."""
    try:
        with Client(url, api_key) as client:
            yield client
    except ClientError as error:
        if as_json:
            print(json.dumps(error.body), flush=True)
        else:
            print(f"mambaft: {error}", file=sys.stderr, flush=True)
        raise typer.Exit(1) from None


def emit(as_json: bool, value: Any, text: str) -> None:
    """Print a command's result: `value` as JSON, or `text` for people."""
    print(json.dumps(value) if as_json else text, flush=True)
