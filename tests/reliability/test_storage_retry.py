"""put_file_retrying: an unreachable storage server is tried again with doubling waits, for as long as
allowed and no longer; errors the server answered with are not retried."""

from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from app.storage import MAX_RETRY_WAIT_S, ObjectStorage, StorageUnavailable, put_file_retrying


class FlakyStorage:
    """put_file raises `error` for the first `failures` calls, then stores 3 bytes."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def put_file(self, key: str, path: Path) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return 3


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


UNREACHABLE = EndpointConnectionError(endpoint_url="http://s3.invalid")


def put(storage: FlakyStorage, clock: FakeClock, retry_seconds: float) -> int:
    flaky: ObjectStorage = storage  # type: ignore[assignment]  (only put_file is called)
    return put_file_retrying(
        flaky, "k", Path("f"), retry_seconds=retry_seconds, sleep=clock.sleep, clock=lambda: clock.now
    )


def test_an_outage_shorter_than_the_limit_is_waited_out_with_doubling_waits() -> None:
    storage, clock = FlakyStorage(failures=6, error=UNREACHABLE), FakeClock()
    assert put(storage, clock, retry_seconds=60) == 3
    assert storage.calls == 7
    assert clock.waits == [1, 2, 4, 8, MAX_RETRY_WAIT_S, MAX_RETRY_WAIT_S]


def test_an_outage_longer_than_the_limit_gives_up_at_the_limit() -> None:
    storage, clock = FlakyStorage(failures=1000, error=UNREACHABLE), FakeClock()
    with pytest.raises(StorageUnavailable, match="unreachable for 20s"):
        put(storage, clock, retry_seconds=20)
    assert clock.now == 20  # the last wait is cut to the deadline, then one last try
    assert clock.waits == [1, 2, 4, 8, 5]


def test_an_error_the_server_answered_with_is_not_retried() -> None:
    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "PutObject")
    storage, clock = FlakyStorage(failures=1, error=denied), FakeClock()
    with pytest.raises(ClientError):
        put(storage, clock, retry_seconds=60)
    assert (storage.calls, clock.waits) == (1, [])
