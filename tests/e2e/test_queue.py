"""app/queue.py: sending run_job by name to the embedded broker and to Redis, and noticing a dead broker."""

import json
import os
import socket
import time
from pathlib import Path

import pytest
import redis

from app.celery_config import QUEUE, RUN_JOB_TASK
from app.queue import BrokerUnavailable, enqueue_job, ping_broker, prune_processed_messages
from app.settings import Settings

from .factories import free_port


def test_enqueue_on_the_embedded_broker_writes_a_message_for_the_worker(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    ping_broker(settings=settings)
    enqueue_job(settings=settings, job_id="ftjob-123")
    [message] = (settings.broker_folder / "queue").glob(f"*.{QUEUE}.msg")
    envelope = json.loads(message.read_text())
    assert envelope["headers"]["task"] == RUN_JOB_TASK
    assert "ftjob-123" in envelope["headers"]["argsrepr"]


def test_enqueue_on_redis_puts_the_task_on_the_mambaft_queue(tmp_path: Path, redis_url: str) -> None:
    settings = Settings(data_dir=tmp_path, broker_url=redis_url)
    ping_broker(settings=settings)
    enqueue_job(settings=settings, job_id="ftjob-456")
    [raw] = redis.Redis.from_url(redis_url).lrange(QUEUE, 0, -1)
    assert json.loads(raw)["headers"]["task"] == RUN_JOB_TASK


def test_unreachable_broker_raises_broker_unavailable_quickly(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        ping_broker(settings=settings)
    with pytest.raises(BrokerUnavailable):
        enqueue_job(settings=settings, job_id="ftjob-789")
    assert time.monotonic() - started < 15


def test_a_redis_that_stops_answering_fails_the_check_within_the_socket_timeout(tmp_path: Path) -> None:
    # Accepts connections (the kernel's backlog does) and never answers a command: a hung server, not a
    # refused port. The check reuses pooled connections, so only the socket timeout bounds its PING.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        settings = Settings(data_dir=tmp_path, broker_url=f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            ping_broker(settings=settings)
        assert time.monotonic() - started < 15


def test_consumed_embedded_messages_are_pruned_once_old(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    processed = settings.broker_folder / "processed"
    processed.mkdir(parents=True)
    old, new = processed / f"1_a.{QUEUE}.msg", processed / f"2_b.{QUEUE}.msg"
    old.write_text("{}")
    new.write_text("{}")
    day_ago = time.time() - 86400
    os.utime(old, (day_ago, day_ago))
    assert prune_processed_messages(settings=settings, older_than_seconds=3600) == 1
    assert not old.exists() and new.exists()
