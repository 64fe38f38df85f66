"""The one way leased work reaches a worker: the row is committed as queued first, then its message is sent.

A worker that takes the message therefore always finds the row; a send that fails leaves a queued row,
which the reaper sends again when its resend clock runs out (worker/reaper.py), and a worker's claim of
a row no longer queued does nothing, so a duplicate message is harmless.
"""

import logging

from sqlalchemy.orm import Session

from app.queue import Broker, BrokerUnavailable
from app.settings import Settings
from app.work.lifecycle import Lifecycle

log = logging.getLogger(__name__)


def require_broker(*, broker: Broker, settings: Settings) -> None:
    """Raise BrokerUnavailable (a 503 on the API) unless the broker answers: checked before the row is
    written, so a create refused while the broker is down commits nothing and its retry creates it once."""
    try:
        broker.ping_broker(settings=settings)
    except Exception as error:  # whatever the broker client raises means "cannot queue"
        # The type only: a broker error's message can carry its URL, credentials included.
        log.warning("broker unreachable; nothing created: %s", type(error).__name__)
        raise BrokerUnavailable("the broker did not answer") from None


def send_committed(*, broker: Broker, settings: Settings, lifecycle: Lifecycle, row_id: str) -> bool:
    """Send the message of a row committed as queued; False (logged) when the broker did not take it."""
    try:
        lifecycle.send(broker, settings, row_id)
    except Exception:  # whatever the broker client raises means "not sent"; the resend clock covers it
        log.warning("could not send %s %s; the reaper sends it later", lifecycle.name, row_id, exc_info=True)
        return False
    return True


def commit_then_send(
    *, session: Session, broker: Broker, settings: Settings, lifecycle: Lifecycle, row_id: str
) -> bool:
    """Commit the transaction that queued the row, then send its message (see `send_committed`)."""
    session.commit()
    return send_committed(broker=broker, settings=settings, lifecycle=lifecycle, row_id=row_id)
