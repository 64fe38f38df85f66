"""The worker's side of evaluations; written without Celery so tests drive it directly.

`run_evaluation` runs one delivery of `mambaft.run_evaluation`: claim the queued evaluation, fetch its
inputs (a job's adapter archive, uploaded task and validation files), score, store the results.

An evaluation is leased like a job (worker/lease.py): a heartbeat renews the lease while it runs, the
outcome is written only while the lease is held, and the reaper requeues it if this process dies.
"""

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from app.archive import unpack
from app.db import session_scope
from app.evaluations.lifecycle import EVALUATIONS
from app.evaluations.models import Evaluation, EvaluationStatus
from app.evaluations.shipped_tasks import shipped_task
from app.files.models import File
from app.jobs.models import Job
from app.settings import Settings
from app.storage import ObjectStorage, storage_from_settings
from worker.engine.spec import EngineFailure
from worker.evaluation.run import EvalSpec, evaluate
from worker.failures import failure_body
from worker.lease import Heartbeat, claim, finish, new_holder_id
from worker.model_store import model_source

log = logging.getLogger(__name__)

EvaluateFn = Callable[[EvalSpec, dict[str, Any] | None], dict[str, Any]]


class InputMissing(EngineFailure):
    """An input named by the evaluation is gone (deleted file, job without adapter)."""

    code = "input_missing"


def _fetch(storage: ObjectStorage, key: str, path: Path) -> Path:
    storage.get_file(key, path)
    return path


def _inputs(settings: Settings, storage: ObjectStorage, evaluation: Evaluation, workdir: Path) -> EvalSpec:
    """Everything the evaluation reads, downloaded into `workdir`."""
    with session_scope(settings.database_url) as session:
        file_ids = [t for t in evaluation.tasks if shipped_task(t) is None] + [evaluation.validation_file]
        files = {f.id: f for f in session.scalars(select(File).where(File.id.in_([i for i in file_ids if i])))}
        job = session.get(Job, evaluation.fine_tuning_job) if evaluation.fine_tuning_job else None
    missing = [i for i in file_ids if i and i not in files]
    if missing:
        raise InputMissing(f"files no longer exist: {', '.join(missing)}")
    tasks = {
        t: shipped_task(t) or _fetch(storage, files[t].storage_key, workdir / f"{t}.jsonl") for t in evaluation.tasks
    }
    adapter = None
    if evaluation.fine_tuning_job:
        if job is None or job.adapter_key is None:
            raise InputMissing(f"the fine-tuning job {evaluation.fine_tuning_job} has no adapter")
        adapter = unpack(_fetch(storage, job.adapter_key, workdir / "adapter.tar.gz"), workdir / "adapter")
    validation = evaluation.validation_file
    model = model_source(settings=settings, storage=storage, owner=evaluation.owner, model_id=evaluation.model)
    return EvalSpec(
        model=str(model),
        tasks=tasks,
        shots=tuple(evaluation.shots),
        adapter=adapter,
        precision=evaluation.precision,
        seed=evaluation.seed,
        limit=evaluation.limit,
        validation_path=_fetch(storage, files[validation].storage_key, workdir / "valid.jsonl") if validation else None,
    )


def _reference_results(settings: Settings, evaluation: Evaluation) -> dict[str, Any] | None:
    if evaluation.reference_evaluation is None:
        return None
    with session_scope(settings.database_url) as session:
        reference = session.get(Evaluation, evaluation.reference_evaluation)
        return reference.results if reference is not None else None


def run_evaluation(*, settings: Settings, evaluation_id: str, score: EvaluateFn = evaluate) -> None:
    """Run one delivery of `mambaft.run_evaluation`; a delivery for an evaluation not queued does nothing."""
    holder = new_holder_id()
    with session_scope(settings.database_url) as session:
        evaluation = claim(session, EVALUATIONS, evaluation_id, holder, lease_seconds=settings.lease_seconds)
    if evaluation is None:
        log.info("evaluation %s is not queued; ignoring this delivery", evaluation_id)
        return
    with (
        tempfile.TemporaryDirectory(prefix=f"mambaft-{evaluation_id}-") as tmp,
        Heartbeat(settings, EVALUATIONS, evaluation_id, holder),
    ):
        try:
            spec = _inputs(settings, storage_from_settings(settings), evaluation, Path(tmp))
            results = score(spec, _reference_results(settings, evaluation))
        except Exception as error:
            log.exception("evaluation %s failed", evaluation_id)
            failure = failure_body(error, generic="evaluation_failed", scratch=Path(tmp))
            finish(settings, EVALUATIONS, evaluation_id, holder, EvaluationStatus.FAILED, error=failure)
            return
    finish(settings, EVALUATIONS, evaluation_id, holder, EvaluationStatus.SUCCEEDED, results=results)
