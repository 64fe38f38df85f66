"""Request latency for Prometheus: one histogram, labelled by route template (never the raw path, whose
ids would make a series per job), method and status."""

import time

from prometheus_client import CollectorRegistry, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A path that matched no route: one label for all of them, whatever a client or scanner made up.
UNMATCHED = "unmatched"
# From a cached read (a few ms) to a large upload; a Server-Sent Events stream lands in +Inf.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def request_histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        "mambaft_http_request_duration_seconds",
        "Time from a request's arrival to the end of its response, by route template",
        ("method", "route", "status"),
        buckets=BUCKETS,
        registry=registry,
    )


def route_template(scope: Scope) -> str:
    """The matched route's path template, its router's prefix included ("/v1/files/{file_id}")."""
    # FastAPI keeps included routers unflattened: scope["route"] is the route as its router declared it
    # (no "/v1"); the context it routed through carries the full template.
    context = scope.get("fastapi", {}).get("effective_route_context")
    return getattr(context, "path", None) or getattr(scope.get("route"), "path", UNMATCHED)


class RequestLatency:
    """ASGI middleware observing every HTTP request into `histogram` once its response is sent."""

    def __init__(self, app: ASGIApp, *, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises before it starts a response

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            labels = (scope["method"], route_template(scope), str(status))
            self.histogram.labels(*labels).observe(time.perf_counter() - started)
