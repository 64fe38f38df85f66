"""API errors as values with codes, and the one place that renders them in the OpenAI error shape.

Services raise `ApiError`; every other failure a request can meet (body validation, unknown route,
oversized body) is translated here too, so a client only ever sees
`{"error": {"code", "message", "param", "type"}}`.
"""

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException

from app.queue import BrokerUnavailable
from app.storage import UNREACHABLE

log = logging.getLogger(__name__)


class ApiError(HTTPException):
    """An error a client can act on.

    It subclasses Starlette's HTTPException because FastAPI lets only that type escape body parsing
    unchanged; any other exception raised while a body streams in becomes a generic 400.
    """

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        type_: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status_code, detail=message, headers=headers)
        self.code = code
        self.message = message
        self.param = param
        self.type = type_

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "param": self.param, "type": self.type}}


def invalid_request(message: str, *, param: str | None = None, code: str = "invalid_request") -> ApiError:
    return ApiError(400, code, message, param=param)


def not_found(code: str, message: str, *, param: str | None = None) -> ApiError:
    return ApiError(404, code, message, param=param)


def conflict(code: str, message: str, *, param: str | None = None) -> ApiError:
    return ApiError(409, code, message, param=param)


# How long a client should wait before retrying while a dependency is unreachable (as /readyz says).
RETRY_AFTER_SECONDS = "5"


def unavailable(code: str, message: str) -> ApiError:
    """503 with Retry-After: a dependency is down, and the same request can succeed once it is back."""
    return ApiError(503, code, message, type_="server_error", headers={"Retry-After": RETRY_AFTER_SECONDS})


def broker_unavailable() -> ApiError:
    """A create that must queue work while the broker is down; raised before anything is committed."""
    return unavailable(
        "broker_unavailable", "The job queue (broker) is unreachable; nothing was created, retry shortly"
    )


def render(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)


def _dotted(loc: Sequence[str | int]) -> str | None:
    """("body", "lora", "target_modules", 0) -> "lora.target_modules[0]", the path a client sent."""
    parts = loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or None


def _from_validation(error: RequestValidationError) -> ApiError:
    first = error.errors()[0]
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "malformed JSON")
        return invalid_request(f"The request body is not valid JSON: {reason}")
    param = _dotted(loc)
    if first.get("type") == "missing" and param is None:
        return invalid_request("A JSON request body is required")
    where = f"{param}: " if param else ""
    return invalid_request(f"{where}{first.get('msg', 'invalid value')}", param=param)


# Statuses the framework itself produces, named for clients.
_FRAMEWORK_CODES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}


def _from_http(error: HTTPException) -> ApiError:
    code = _FRAMEWORK_CODES.get(error.status_code, "http_error")
    message = error.detail if isinstance(error.detail, str) else "Request failed"
    return ApiError(error.status_code, code, message, headers=error.headers)


async def _api_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ApiError)
    return render(error)


async def _http_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    return render(_from_http(error))


async def _validation_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return render(_from_validation(error))


async def _database_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, DBAPIError)
    # A lost or refused connection (or a locked SQLite file) is an outage; anything else is a bug.
    if not (error.connection_invalidated or isinstance(error, OperationalError)):
        return await _unexpected(request, error)
    log.warning("database unreachable on %s %s: %s", request.method, request.url.path, type(error.orig).__name__)
    return render(unavailable("database_unavailable", "The database is unreachable; retry shortly"))


async def _storage_error(request: Request, error: Exception) -> JSONResponse:
    # Only errors of reaching the server: one it answered (denied, no such bucket) stays a 500.
    log.warning("object storage unreachable on %s %s: %s", request.method, request.url.path, type(error).__name__)
    return render(unavailable("storage_unavailable", "Object storage is unreachable; retry shortly"))


async def _broker_error(_request: Request, error: Exception) -> JSONResponse:
    return render(broker_unavailable())


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    return render(ApiError(500, "internal_error", "The server failed to handle the request", type_="server_error"))


def install_error_handlers(app: FastAPI) -> None:
    """Route every failure through the OpenAI error shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(BrokerUnavailable, _broker_error)
    for unreachable in UNREACHABLE:
        app.add_exception_handler(unreachable, _storage_error)
    app.add_exception_handler(Exception, _unexpected)
