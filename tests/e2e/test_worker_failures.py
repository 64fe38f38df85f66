"""A worker's failure carries its code as its type (worker/failures.py); an exception of no known type gets
the kind's one generic code, wherever it was raised."""

from pathlib import Path

import pytest

from app.storage import StorageUnavailable
from worker.engine.data import load_blocks, tokenize_record
from worker.evaluation.multiple_choice import read_task
from worker.evaluation.perplexity import InvalidValidationFile
from worker.failures import failure_body


def test_typed_failures_keep_their_code_and_lose_the_scratch_folder(tmp_path: Path) -> None:
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"prompt": 1}\n')
    with pytest.raises(ValueError) as data_error:
        load_blocks(bad, tokenizer=None, max_seq_len=8)
    with pytest.raises(ValueError) as task_error:
        read_task(bad)

    assert failure_body(data_error.value, generic="training_failed", scratch=tmp_path) == {
        "code": "invalid_training_file",
        "message": "train.jsonl: line 1: expected {'text'}, {'prompt', 'completion'} or {'messages'}",
    }
    assert failure_body(task_error.value, generic="evaluation_failed")["code"] == "invalid_task_file"
    assert failure_body(InvalidValidationFile("v"), generic="evaluation_failed")["code"] == "invalid_validation_file"
    assert failure_body(StorageUnavailable("down"), generic="training_failed")["code"] == "storage_unavailable"


def test_an_untyped_error_gets_the_generic_code_even_from_inside_the_engine() -> None:
    with pytest.raises(ValueError) as untyped:
        tokenize_record({"neither": "text"}, tokenizer=None)  # raised in worker.engine.data, not typed
    assert failure_body(untyped.value, generic="training_failed")["code"] == "training_failed"
    assert failure_body(RuntimeError(), generic="model_creation_failed") == {
        "code": "model_creation_failed",
        "message": "RuntimeError",
    }
