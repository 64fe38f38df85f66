"""A trained job's stability report (worker/evaluation/stability), made before the job is marked succeeded.

A client that sees `succeeded` finds `jobs/<id>/stability.json` and `.png`, or, when the report could not be
made, `stability.error.json` with the reason, which the API answers with. A report never fails the job: it
is a measurement of the result, not part of it.
"""

import json
import logging
from dataclasses import dataclass
from typing import Any

from app.jobs.keys import stability_key
from app.storage import ObjectStorage
from worker.engine.spec import TrainResult, TrainSpec
from worker.evaluation.stability.plot import plot_divergence
from worker.evaluation.stability.report import job_stability

log = logging.getLogger(__name__)

MAX_REASON = 2000


@dataclass(frozen=True)
class StabilityOutcome:
    """What the job's events say about its report."""

    message: str
    level: str
    summary: dict[str, Any] | None


def store_stability_report(
    *, storage: ObjectStorage, job_id: str, spec: TrainSpec, result: TrainResult
) -> StabilityOutcome:
    """Measure the base and the fine-tuned model on the job's validation file (else its training file) and
    store the report; on failure store the reason instead. Never raises."""
    workdir = spec.output_dir
    try:
        reports = job_stability(
            spec.model, result.adapter_dir, spec.validation_path or spec.train_path, precision=spec.precision
        )
        report_json = workdir / "stability.json"
        report_json.write_text(json.dumps({name: r.to_dict() for name, r in reports.items()}))
        storage.put_file(stability_key(job_id, "png"), plot_divergence(reports, workdir / "stability.png"))
        storage.put_file(stability_key(job_id, "json"), report_json)  # last: its presence means both are there
    except Exception as error:
        log.exception("job %s: stability report failed", job_id)
        reason = (str(error) or type(error).__name__).replace(f"{workdir}/", "")[:MAX_REASON]
        _store_failure(storage, job_id, reason, workdir)
        return StabilityOutcome(f"Stability report failed: {reason}", "warning", None)
    tuned = reports["fine_tuned"]
    message = (
        f"Stability report: max Lyapunov exponent {tuned.max_lyapunov_exponent:.3g} "
        f"({'stable' if tuned.stable else 'UNSTABLE'}); {tuned.precision} divergence slope {tuned.max_slope:.3g}"
    )
    summary = {
        "stable": tuned.stable,
        "max_lyapunov_exponent": tuned.max_lyapunov_exponent,
        "max_slope": tuned.max_slope,
        "exponential_growth": tuned.exponential_growth,
    }
    return StabilityOutcome(message, "info", summary)


def _store_failure(storage: ObjectStorage, job_id: str, reason: str, workdir: Any) -> None:
    path = workdir / "stability.error.json"
    try:
        path.write_text(json.dumps({"code": "stability_failed", "message": reason}))
        storage.put_file(stability_key(job_id, "error.json"), path)
    except Exception:  # the job's event still carries the reason
        log.exception("job %s: could not store why the stability report failed", job_id)
