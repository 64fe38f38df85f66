"""The FastAPI application: routers, error rendering, request guards."""

import gc
from collections.abc import Callable

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from app import health
from app.base_models import routes as models_routes
from app.completions import routes as completions_routes
from app.errors import ApiError, install_error_handlers
from app.evaluations import routes as evaluations_routes
from app.files import routes as files_routes
from app.files.validation import file_too_large
from app.guards import BodyLimit, LimitFor, RejectNulInUrl
from app.jobs import routes as jobs_routes
from app.limits import RateLimiter
from app.metrics import routes as metrics_routes
from app.metrics.http import RequestLatency, request_histogram
from app.settings import Settings, get_settings
from app.ui import routes as ui_routes
from app.webhooks import routes as webhooks_routes

UPLOAD_PATH = "/v1/files"
# JSON bodies are small (a job request is a few hundred bytes); only uploads may be large.
JSON_BODY_LIMIT = 1024 * 1024
# Multipart boundaries and part headers around the file; the file itself is capped exactly while parsed.
MULTIPART_OVERHEAD = 64 * 1024


def request_too_large() -> ApiError:
    return ApiError(413, "request_too_large", f"The request body exceeds {JSON_BODY_LIMIT} bytes")


def body_limits(settings: Settings) -> LimitFor:
    """The body cap and its error for each request path."""

    def limit_for(path: str) -> tuple[int, Callable[[], ApiError]]:
        if path == UPLOAD_PATH:
            return settings.max_upload_bytes + MULTIPART_OVERHEAD, lambda: file_too_large(settings.max_upload_bytes)
        return JSON_BODY_LIMIT, request_too_large

    return limit_for


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="mambaft",
        summary="Fine-tuning as a service for Mamba state-space models, with OpenAI's fine-tuning API",
        version="0.1.0",
    )
    app.state.settings = settings
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_second)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit_for=body_limits(settings))
    app.add_middleware(RejectNulInUrl)
    # This process's request metrics (GET /metrics sums them over processes when there are several).
    app.state.metrics_registry = CollectorRegistry()
    # Outermost, so requests the guards refuse are timed and counted too.
    app.add_middleware(RequestLatency, histogram=request_histogram(app.state.metrics_registry))
    app.include_router(health.router)
    app.include_router(metrics_routes.router)
    routers = (files_routes, jobs_routes, models_routes, evaluations_routes, completions_routes, webhooks_routes)
    for router in (module.router for module in routers):
        app.include_router(router, prefix="/v1")
    app.include_router(ui_routes.router)
    return app


def served_app(settings: Settings | None = None) -> FastAPI:
    """The app as `mambaft api` and `mambaft serve` run it, one per process."""
    app = create_app(settings)
    # Everything built so far (modules, the app, its schemas) lives as long as the process. Frozen, it is
    # not walked by the full garbage collections that come every few seconds under load and would set
    # the reads' tail latency (bench/RESULTS.md, API load). Collected first, so no garbage is frozen with
    # it. Not in `create_app`: tests build many apps in one process.
    gc.collect()
    gc.freeze()
    return app
