"""What the upload accepts, the worker trains on: files uploaded through the API, then a job over them run
by the worker's job runner in-process, on the very bytes stored."""

import codecs
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from transformers import AutoTokenizer

from app.jobs.lifecycle import JobStatus
from app.settings import Settings
from worker.engine.data import load_blocks
from worker.job_runner import run_job

from .factories import job_row

RECORDS = [
    {"prompt": f"reverse: {word} =", "completion": " " + word[::-1] + tail}
    for word in ("abc", "mamba", "state", "space", "model", "scan")
    for tail in ("", "\u2028", "\u0085")  # separators JSON allows raw inside strings
]


def lines(separator: bytes = b"\n", **dumps: object) -> list[bytes]:
    return [json.dumps(record, **dumps).encode() + separator for record in RECORDS]


# Each file holds RECORDS, written the way some client or editor might.
HOSTILE_FILES = {
    "utf8_bom": codecs.BOM_UTF8 + b"".join(lines()),
    "crlf_line_ends": b"".join(lines(b"\r\n")),
    "raw_u2028_and_u0085_in_strings": b"".join(lines(ensure_ascii=False)),
    "cr_between_json_tokens": b"".join(line.replace(b", ", b",\r") for line in lines()),
}
MAX_SEQ_LEN = 32


@pytest.fixture
def tokenizer(models_dir: Path):
    return AutoTokenizer.from_pretrained(models_dir / "mamba-tiny")


def tokens_of_plain_file(tokenizer, tmp_path: Path) -> int:
    """Tokens the worker reads from RECORDS written plainly: one ASCII-escaped JSON line per record."""
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(b"".join(lines()))
    return int(load_blocks(plain, tokenizer, MAX_SEQ_LEN).lengths.sum())


def upload(client: TestClient, content: bytes):
    return client.post("/v1/files", files={"file": ("train.jsonl", content)}, data={"purpose": "fine-tune"})


@pytest.mark.parametrize("content", HOSTILE_FILES.values(), ids=HOSTILE_FILES.keys())
def test_the_worker_reads_every_example_of_a_file_the_upload_accepted(
    client: TestClient, tokenizer, tmp_path: Path, content: bytes
) -> None:
    uploaded = upload(client, content)
    assert uploaded.status_code == 200, uploaded.text
    stored = tmp_path / "stored.jsonl"
    stored.write_bytes(client.get(f"/v1/files/{uploaded.json()['id']}/content").content)

    blocks = load_blocks(stored, tokenizer, MAX_SEQ_LEN)

    assert int(blocks.lengths.sum()) == tokens_of_plain_file(tokenizer, tmp_path)


def test_a_job_on_an_uploaded_file_with_every_hostile_line_form_trains_every_example(
    client: TestClient, settings: Settings, tokenizer, tmp_path: Path
) -> None:
    first, second, third, *rest = lines(ensure_ascii=False)
    content = codecs.BOM_UTF8 + first.replace(b"\n", b"\r\n") + second + third.replace(b", ", b",\r") + b"".join(rest)
    uploaded = upload(client, content)
    assert uploaded.status_code == 200, uploaded.text
    hyperparameters = {"n_epochs": 1, "batch_size": 4, "learning_rate": 3e-3, "max_seq_len": MAX_SEQ_LEN}
    body = {"model": "mamba-tiny", "training_file": uploaded.json()["id"], "hyperparameters": hyperparameters}
    created = client.post("/v1/fine_tuning/jobs", json={**body, "precision": "fp32"})
    assert created.status_code == 200, created.text

    run_job(settings=settings, job_id=created.json()["id"])

    job = job_row(settings, created.json()["id"])
    assert job.status == JobStatus.SUCCEEDED, job.error
    # One epoch over every example, with the same tokens as the same records written plainly.
    assert job.trained_tokens == tokens_of_plain_file(tokenizer, tmp_path)
    assert job.metrics["train_loss"] > 0


def test_the_upload_and_the_worker_name_the_same_bad_line(client: TestClient, tokenizer, tmp_path: Path) -> None:
    u2028, u0085, cr_between_tokens = lines(ensure_ascii=False)[1], lines(ensure_ascii=False)[2], lines()[3]
    assert b"\xe2\x80\xa8" in u2028 and b"\xc2\x85" in u0085  # the raw characters, not escapes
    content = (
        codecs.BOM_UTF8
        + lines(b"\r\n")[0]
        + u2028
        + u0085
        + cr_between_tokens.replace(b", ", b",\r")
        + b'{"prompt": "p", "completion": oops}\n'
    )

    refused = upload(client, content)
    assert refused.status_code == 400
    assert refused.json()["error"]["message"].startswith("Line 5: invalid JSON"), refused.text

    path = tmp_path / "stored.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"stored\.jsonl: line 5: invalid JSON"):
        load_blocks(path, tokenizer, MAX_SEQ_LEN)
