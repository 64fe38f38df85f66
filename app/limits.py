"""Per-key limits: a token bucket of requests per second per owner, and caps on unfinished jobs and on
completion requests in flight.

The bucket lives on the app instance (`app.state.rate_limiter`), not in a module global, so two apps in
one process (tests, or several mounted apps) never share state. It is per API process: N replicas
allow N times the rate, which is the usual trade for not putting a shared store on every request.
The caps are counted in the database under a per-owner lock, so they hold across API replicas and
concurrent requests.
"""

import math
import threading
import time
from collections.abc import Callable

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from app.completions.models import UNFINISHED, Completion
from app.db import lock_until_commit
from app.errors import ApiError
from app.jobs.lifecycle import TERMINAL
from app.jobs.models import Job


def too_many_requests(message: str, *, retry_after: int, code: str = "rate_limit_exceeded") -> ApiError:
    return ApiError(429, code, message, type_="requests", headers={"Retry-After": str(retry_after)})


class RateLimiter:
    """Token buckets keyed by owner: `rate` tokens a second, at most `rate` banked (a one-second burst)."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._lock = threading.Lock()  # `Db.run` checks from worker threads
        self._buckets: dict[str, tuple[float, float]] = {}  # owner -> (tokens, last refill time)

    def check(self, owner: str) -> None:
        """Take one token for `owner`, or raise 429 saying how long until one is free. rate 0 = off."""
        if self.rate <= 0:
            return
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.get(owner, (self.rate, now))
            tokens = min(self.rate, tokens + (now - last) * self.rate)
            if tokens < 1:
                self._buckets[owner] = (tokens, now)
                wait = math.ceil((1 - tokens) / self.rate)
                raise too_many_requests(
                    f"Rate limit of {self.rate:g} requests per second exceeded; retry after {wait} s",
                    retry_after=wait,
                )
            self._buckets[owner] = (tokens - 1, now)


# A job slot frees when a job ends, which takes minutes; a client retrying sooner only adds load.
JOB_SLOT_RETRY_AFTER_SECONDS = 30


def _unfinished(session: Session, owner: str, lock: str, count: Select[tuple[int]], limit: int) -> int | None:
    """The owner's unfinished things that `count` counts, when there are `limit` or more; else None.

    Holds the owner's `lock` until the caller's transaction commits, so the row it then inserts is counted
    by the owner's next request: unlocked, concurrent creates all counted the same rows.
    """
    lock_until_commit(session, f"{lock}:{owner}")
    unfinished = session.scalar(count) or 0
    return unfinished if unfinished >= limit else None


def check_job_slots(*, session: Session, owner: str, limit: int) -> None:
    """Raise 429 if `owner` already has `limit` jobs that have not finished. limit 0 = off."""
    if limit <= 0:
        return
    count = select(func.count()).select_from(Job).where(Job.owner == owner, Job.status.not_in(TERMINAL))
    unfinished = _unfinished(session, owner, "job-slots", count, limit)
    if unfinished is not None:
        raise too_many_requests(
            f"You have {unfinished} unfinished fine-tuning jobs, the most allowed at once ({limit}); wait for"
            " one to finish or cancel one",
            retry_after=JOB_SLOT_RETRY_AFTER_SECONDS,
            code="concurrent_jobs_limit_exceeded",
        )


def check_completion_slots(*, session: Session, owner: str, limit: int, since: int) -> None:
    """Raise 429 if `owner` already has `limit` completion requests in flight created at or after `since`
    (older ones were given up on by the API, whatever their row says). limit 0 = off."""
    if limit <= 0:
        return
    count = select(func.count()).select_from(Completion)
    count = count.where(Completion.owner == owner, Completion.status.in_(UNFINISHED), Completion.created_at >= since)
    unfinished = _unfinished(session, owner, "completion-slots", count, limit)
    if unfinished is not None:
        raise too_many_requests(
            f"You have {unfinished} completion requests in flight, the most allowed at once ({limit}); retry"
            " when one has finished",
            retry_after=1,
            code="concurrent_completions_limit_exceeded",
        )
