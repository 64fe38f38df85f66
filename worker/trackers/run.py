"""What every tracker's run is given and does."""

from dataclasses import dataclass
from typing import Any, Literal, Protocol

# How the attempt ended: trained to the end, raised, or stopped (cancelled, or handed back on a shutdown).
Outcome = Literal["finished", "failed", "stopped"]


@dataclass(frozen=True)
class RunInfo:
    job_id: str
    params: dict[str, Any]  # flat: "n_epochs", "lora.r", ...


class TrackerRun(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def finish(self, outcome: Outcome) -> None: ...
