"""Liveness and readiness probes for orchestrators (no auth: they reveal no tenant data)."""

from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.db import get_engine
from app.deps import BrokerDep, SettingsDep, get_storage
from app.errors import RETRY_AFTER_SECONDS

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check(probe: Callable[[], object]) -> str:
    try:
        probe()
    except Exception as error:
        # Only the exception type: messages can carry connection strings with credentials.
        return f"unavailable ({type(error).__name__})"
    return "ok"


def _select_one(database_url: str) -> None:
    with get_engine(database_url).connect() as connection:
        connection.execute(text("SELECT 1"))


@router.get("/readyz")
def readyz(request: Request, settings: SettingsDep, broker: BrokerDep) -> JSONResponse:
    checks = {
        "database": _check(lambda: _select_one(settings.database_url)),
        "broker": _check(lambda: broker.ping_broker(settings=settings)),
        "storage": _check(lambda: get_storage(request).ping()),
    }
    if all(state == "ok" for state in checks.values()):
        return JSONResponse({"status": "ok", "checks": checks})
    return JSONResponse(
        {"status": "unavailable", "checks": checks}, status_code=503, headers={"Retry-After": RETRY_AFTER_SECONDS}
    )
