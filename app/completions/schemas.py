"""Shapes of POST /v1/completions and /v1/chat/completions: OpenAI's requests (the options a Mamba serves)
and responses, whole or as stream chunks."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints

from app.jobs.schemas import STRICT, Storable

Text = Annotated[Storable, StringConstraints(max_length=1_000_000)]
StopText = Annotated[Storable, StringConstraints(min_length=1, max_length=256)]


class Sampling(BaseModel):
    """What both endpoints share. `n` stays in the shape only so that n > 1 gets a clear 400."""

    model_config = STRICT

    model: Annotated[Storable, StringConstraints(min_length=1, max_length=512)]
    max_tokens: int | None = Field(None, ge=1)
    # 0: greedy. OpenAI's range.
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = 1
    stop: StopText | list[StopText] | None = Field(None, max_length=4)
    seed: int | None = None
    stream: bool = False
    user: Annotated[str, StringConstraints(max_length=256)] | None = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionCreate(Sampling):
    # One prompt; a list must hold exactly one (the SDK sends either).
    prompt: Text | list[Text]


class ChatMessage(BaseModel):
    model_config = STRICT

    role: Literal["system", "developer", "user", "assistant"]
    content: Text


class ChatCompletionCreate(Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    # The chat endpoint's newer name for max_tokens; give one or the other.
    max_completion_tokens: int | None = Field(None, ge=1)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class _Choice(BaseModel):
    index: int = 0  # always one choice (n=1)
    logprobs: None = None
    finish_reason: str | None


class _Answer(BaseModel):
    id: str
    created: int
    model: str


class TextChoice(_Choice):
    text: str


class TextCompletion(_Answer):
    object: Literal["text_completion"] = "text_completion"
    choices: list[TextChoice]
    usage: Usage | None = None  # none in stream chunks


class Message(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(_Choice):
    message: Message


class ChatCompletion(_Answer):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(_Choice):
    delta: ChatDelta


class ChatCompletionChunk(_Answer):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]


def request_fields(body: CompletionCreate | ChatCompletionCreate, max_tokens: int) -> dict[str, Any]:
    """What the worker needs of a request, as stored on its row."""
    fields: dict[str, Any] = {
        "max_tokens": max_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "stop": body.stops(),
        "seed": body.seed,
    }
    if isinstance(body, ChatCompletionCreate):
        return {**fields, "messages": [m.model_dump() for m in body.messages]}
    return {**fields, "prompt": body.prompt if isinstance(body.prompt, str) else body.prompt[0]}
