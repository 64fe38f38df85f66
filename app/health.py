"""Liveness and readiness probes for orchestrators (no auth: they reveal no tenant data)."""

from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import func, select, text

from app.db import get_engine, now
from app.deps import BrokerDep, SettingsDep, get_storage
from app.errors import RETRY_AFTER_SECONDS
from app.settings import Settings
from app.workers.alive import alive_window_seconds
from app.workers.models import WorkerHeartbeat

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


def _workers(settings: Settings) -> str:
    window = alive_window_seconds(settings)
    try:
        with get_engine(settings.database_url).connect() as connection:
            last_seen = connection.scalar(select(func.max(WorkerHeartbeat.last_seen)))
    except Exception as error:
        return f"unavailable ({type(error).__name__})"
    if last_seen is None or now() - last_seen > window:
        return f"none seen in the last {window} s"
    return "ok"


@router.get("/readyz")
def readyz(request: Request, settings: SettingsDep, broker: BrokerDep) -> JSONResponse:
    """503 when the API cannot serve (its database, broker or storage is unreachable). No live worker
    leaves it 200, status `degraded`: requests are still answered and jobs wait in the queue."""
    checks = {
        "database": _check(lambda: _select_one(settings.database_url)),
        "broker": _check(lambda: broker.ping_broker(settings=settings)),
        "storage": _check(lambda: get_storage(request).ping()),
    }
    serving = all(state == "ok" for state in checks.values())
    checks["workers"] = _workers(settings)
    if not serving:
        return JSONResponse(
            {"status": "unavailable", "checks": checks}, status_code=503, headers={"Retry-After": RETRY_AFTER_SECONDS}
        )
    return JSONResponse({"status": "ok" if checks["workers"] == "ok" else "degraded", "checks": checks})
