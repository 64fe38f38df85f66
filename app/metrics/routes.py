"""GET /metrics: Prometheus's text format, for the operator's scraper (docs/self-hosting.md, Monitoring)."""

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.concurrency import run_in_threadpool

from app.deps import SettingsDep, check_scraper
from app.metrics.database import DatabaseCollector
from app.settings import Settings

router = APIRouter(tags=["monitoring"])


def _scrape(settings: Settings, own_process: CollectorRegistry) -> bytes:
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(settings))
    if settings.prometheus_multiproc_dir is None:
        registry.register(own_process)
    else:  # every API process's request metrics, summed, whichever process answers the scrape
        MultiProcessCollector(registry, path=str(settings.prometheus_multiproc_dir))
    return generate_latest(registry)


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(check_scraper)])
async def metrics(request: Request, settings: SettingsDep) -> Response:
    # The database figures are read with blocking queries: off the event loop.
    body = await run_in_threadpool(_scrape, settings, request.app.state.metrics_registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
