"""Where a job's objects live in storage: one place, shared by the API (reads) and the worker (writes)."""


def adapter_key(job_id: str) -> str:
    return f"jobs/{job_id}/adapter.tar.gz"


def merged_key(job_id: str) -> str:
    return f"jobs/{job_id}/merged.tar.gz"


def checkpoint_key(job_id: str, step: int) -> str:
    return f"jobs/{job_id}/checkpoints/step-{step}.tar.gz"


def stability_key(job_id: str, suffix: str) -> str:
    """The stability report of a job: `json` or `png`."""
    return f"jobs/{job_id}/stability.{suffix}"


def result_key(job_id: str, filename: str) -> str:
    """One of a job's result files (`metrics.csv`, `loss_curve.png`)."""
    return f"jobs/{job_id}/results/{filename}"
