"""`mambaft chat`: talk to a base model or a job's fine-tuned model through POST /v1/chat/completions."""

import sys
from typing import Annotated

import typer

from app.client.options import DEFAULT_URL, ApiKey, Json, Url, connect, emit


def chat(
    model: Annotated[str, typer.Argument(help="A base model's id or a job's fine_tuned_model.")],
    message: Annotated[
        str | None, typer.Argument(help="One message; without it, one message per line of stdin, as one conversation.")
    ] = None,
    system: Annotated[str | None, typer.Option(help="A system message before the conversation.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="The most tokens an answer may have.")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 answers greedily (server default: 1).")] = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    as_json: Json = False,
) -> None:
    """Chat with a model: each answer prints as it is generated (with --json, each whole completion object)."""
    messages = [{"role": "system", "content": system}] if system else []
    settings = {"max_tokens": max_tokens, "temperature": temperature}
    turns = [message] if message is not None else (line.rstrip("\n") for line in sys.stdin)
    with connect(url, api_key, as_json) as client:
        for text in turns:
            messages.append({"role": "user", "content": text})
            body = {"model": model, "messages": messages} | {k: v for k, v in settings.items() if v is not None}
            if as_json:
                completion = client.post("/chat/completions", body)
                emit(True, completion, "")
                answer = completion["choices"][0]["message"]["content"]
            else:
                answer = ""
                for piece in client.chat_stream(body):
                    answer += piece
                    print(piece, end="", flush=True)
                print(flush=True)
            messages.append({"role": "assistant", "content": answer})
