"""What a worker records when an attempt at leased work fails: a code the failure carries as its type, and
a message fit for the client.

Every failure the worker can name is an `EngineFailure` (the engine's, and the worker's own subclasses)
or a storage outage; anything else is reported under the kind's one generic code.
"""

from pathlib import Path

from app.storage import StorageUnavailable
from worker.engine.spec import EngineFailure

MAX_ERROR_MESSAGE = 2000


def failure_body(error: BaseException, *, generic: str, scratch: Path | None = None) -> dict[str, str]:
    """{"code", "message"} of a failed attempt; paths inside the attempt's `scratch` folder are cut from
    the message, since they mean nothing to the client."""
    if isinstance(error, EngineFailure):
        code = error.code
    elif isinstance(error, StorageUnavailable):
        code = "storage_unavailable"
    else:
        code = generic
    message = str(error) or type(error).__name__
    if scratch is not None:
        message = message.replace(f"{scratch}/", "")
    return {"code": code, "message": message[:MAX_ERROR_MESSAGE]}
