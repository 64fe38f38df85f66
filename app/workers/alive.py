"""When a worker counts as alive: its heartbeat row (app/workers/models.py) was renewed recently enough.
`/readyz` and `/metrics` both ask this."""

from app.settings import Settings


def alive_window_seconds(settings: Settings) -> int:
    """How recently a worker must have beaten to count as alive: three missed beats, plus slack for a
    busy database."""
    return 3 * settings.heartbeat_seconds + 5
