"""ASGI guards that run before routing: request body size caps and NUL-free URLs.

Both answer in the OpenAI error shape themselves when they can, or raise an `ApiError` from inside the
body stream, which FastAPI lets through to the error handlers.
"""

from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ApiError, invalid_request, render

# Picks the byte cap and the error for a request path.
LimitFor = Callable[[str], tuple[int, Callable[[], ApiError]]]


class BodyLimit:
    """Cap request bodies: a declared Content-Length over the cap is refused before reading a byte, and
    a body streamed without one is cut off as soon as it passes the cap."""

    def __init__(self, app: ASGIApp, *, limit_for: LimitFor) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, error = self.limit_for(scope["path"])
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await render(error())(scope, receive, send)
            return
        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise error()
            return message

        await self.app(scope, capped_receive, send)


class RejectNulInUrl:
    """Refuse NUL in a path or query: Postgres rejects any query parameter holding one, which would
    otherwise surface as a 500 for an id or cursor a client made up."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and ("\x00" in scope["path"] or b"%00" in scope["query_string"]):
            await render(invalid_request("The URL must not contain NUL characters"))(scope, receive, send)
            return
        await self.app(scope, receive, send)
