"""The API over HTTP: JSON requests, uploads, downloads and a job's event stream, errors as ClientError."""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DONE = "[DONE]"


class ClientError(Exception):
    """A refused request (the server's OpenAI-shaped error) or a server that cannot be reached."""

    def __init__(self, message: str, *, status: int | None = None, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body or {"error": {"message": message, "code": "connection_failed"}}


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event: its `id:`, `event:` (default "message") and decoded `data:`."""

    id: str | None
    kind: str
    data: Any


def sse_events(lines: Iterator[str]) -> Iterator[Event]:
    """The events in a text/event-stream; `data: [DONE]` comes as an event of kind "done"."""
    event_id, kind, data = None, "message", []
    for line in lines:
        if line:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "id":
                event_id = value
            elif field == "event":
                kind = value
            elif field == "data":
                data.append(value)
            continue
        if data:
            text = "\n".join(data)
            yield Event(event_id, "done", None) if text == DONE else Event(event_id, kind, json.loads(text))
        event_id, kind, data = None, "message", []


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    response.read()
    try:
        body = response.json()
        message = body["error"]["message"]
    except (ValueError, KeyError, TypeError):
        body, message = None, response.text or response.reason_phrase
    raise ClientError(f"{response.status_code}: {message}", status=response.status_code, body=body)


class Client:
    """A session with one server (`url`, its root) as one API key's owner."""

    def __init__(
        self, url: str, api_key: str | None, *, timeout_s: float = 60.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=f"{self.url}/v1", headers=headers, timeout=timeout_s, transport=transport)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_exc: object) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise ClientError(
                f"cannot reach {self.url} ({error}); is the server running? (--url, MAMBAFT_URL)"
            ) from None
        _raise_for(response)
        return response

    def get(self, path: str, **params: Any) -> Any:
        return self._send("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._send("POST", path, json=body).json()

    def upload(self, path: Path, purpose: str) -> Any:
        with path.open("rb") as content:
            return self._send("POST", "/files", files={"file": (path.name, content)}, data={"purpose": purpose}).json()

    def download(self, path: str, destination: Path) -> Path:
        """Stream the body of GET `path` into `destination`."""
        try:
            with self._http.stream("GET", path) as response:
                _raise_for(response)
                with destination.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
        except httpx.TransportError as error:
            raise ClientError(f"download of {path} from {self.url} failed ({error})") from None
        return destination

    def job_events(self, job_id: str) -> Iterator[Event]:
        """The job's events, oldest first, until it is finished; reconnects where a stream left off."""
        path = f"/fine_tuning/jobs/{job_id}/events"
        # No read timeout: a queued job sends nothing for as long as it waits, and the server ends every
        # stream within an hour (app/jobs/events.py), which reconnects.
        timeout = httpx.Timeout(self._http.timeout.connect, read=None)
        after = None
        while True:
            params = {"stream": "true"} | ({"after": after} if after else {})
            try:
                with self._http.stream("GET", path, params=params, timeout=timeout) as response:
                    _raise_for(response)
                    for event in sse_events(response.iter_lines()):
                        if event.kind == "done":
                            return
                        if event.kind == "error":
                            raise ClientError(event.data["error"]["message"], body=event.data)
                        after = event.id or after
                        yield event
            except httpx.TransportError as error:
                raise ClientError(f"the event stream from {self.url} broke off ({error})") from None
