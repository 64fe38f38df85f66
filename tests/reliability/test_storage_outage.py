"""Object storage (our own moto server) unreachable while a running job uploads a checkpoint: the
worker retries for `storage_retry_seconds`, so a shorter outage costs only time and a longer one fails
the job with `storage_unavailable`, never stuck in `running`."""

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .own_s3 import OwnS3
from .production_stack import ProductionStack, production_stack
from .test_faults_mid_job import OUTAGE_TRAIN_LINES, wait_until_mid_job

SHORT_OUTAGE_S = 5
LONG_RETRY_S = 30
SHORT_RETRY_S = 2


@pytest.fixture
def stack(tmp_path: Path, models_dir: Path, s3: OwnS3) -> Iterator[ProductionStack]:
    with production_stack(tmp_path, models_dir, s3.endpoint) as running:
        yield running


def start_job_and_stop_s3_mid_job(stack: ProductionStack, s3: OwnS3, retry_seconds: int) -> str:
    stack.env["MAMBAFT_STORAGE_RETRY_SECONDS"] = str(retry_seconds)
    stack.start_worker()
    job_id = stack.create_job(train_lines=OUTAGE_TRAIN_LINES)
    wait_until_mid_job(stack, job_id)  # checkpoints every 2 steps: the next one meets the outage
    s3.stop()
    return job_id


def test_job_waits_out_a_storage_outage_shorter_than_the_retry_limit_and_succeeds(
    stack: ProductionStack, s3: OwnS3
) -> None:
    job_id = start_job_and_stop_s3_mid_job(stack, s3, retry_seconds=LONG_RETRY_S)
    time.sleep(SHORT_OUTAGE_S)
    s3.start()

    job = stack.wait_terminal(job_id)
    assert job.status == "succeeded", f"{job.error}\n{stack.log_tail()}"


def test_job_fails_with_storage_unavailable_when_the_outage_outlasts_the_retry_limit(
    stack: ProductionStack, s3: OwnS3
) -> None:
    job_id = start_job_and_stop_s3_mid_job(stack, s3, retry_seconds=SHORT_RETRY_S)

    job = stack.wait_terminal(job_id)
    assert job.status == "failed", stack.log_tail()
    assert job.error is not None and job.error["code"] == "storage_unavailable"
    assert f"unreachable for {SHORT_RETRY_S}s" in job.error["message"]
