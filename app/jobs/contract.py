"""The job contract: the resolved settings a job trains with, as the API stores them and the worker runs them.

The API resolves a request into these (app/jobs/config.py) and stores their JSON on the job; the worker
rebuilds them from that JSON and hands them to the training engine, which takes `LoraSpec` as it is.
Standard library only (the family catalog is too), so the API, the worker and the bare engine share
one definition and one set of defaults without torch or the HTTP stack.
"""

from dataclasses import asdict, dataclass, fields
from typing import Any, Self

from app.families import default_lora_targets
from app.families.mamba import MAMBA


class _Stored:
    """JSON for a job's column, and back again."""

    def stored(self) -> dict[str, Any]:
        return {name: list(value) if isinstance(value, tuple) else value for name, value in asdict(self).items()}

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> Self:
        """Rebuild from `stored()` JSON. Jobs stored by earlier versions may lack a key or hold None for
        it: those take the default; keys this version no longer knows are ignored."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if data.get(f.name) is not None})


@dataclass(frozen=True)
class LoraSpec(_Stored):
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    # Mamba's defaults; `for_family` picks another family's.
    target_modules: tuple[str, ...] = MAMBA.default_targets
    # Also train the SSM's own parameters (A_log, D, dt_proj.bias) in full, alongside LoRA.
    train_ssm_params: bool = False
    # Also publish the base weights with the adapter merged in: a plain model any tool can load.
    export_merged: bool = False

    def __post_init__(self) -> None:
        # JSON and request bodies carry a list; a frozen spec holds a tuple (hashable, never mutated).
        object.__setattr__(self, "target_modules", tuple(self.target_modules))

    @classmethod
    def for_family(cls, family: str | None, **given: Any) -> "LoraSpec":
        """The `given` settings over the defaults, the targets defaulting to those of `family` (None: a
        family not known yet, so the targets every family shares)."""
        return cls(**{"target_modules": default_lora_targets(family), **given})


@dataclass(frozen=True)
class HyperparameterSpec(_Stored):
    n_epochs: int = 1
    batch_size: int = 4
    learning_rate: float = 1e-3
    max_seq_len: int = 256
    # Memory-lean mode: recompute each layer's activations in backward instead of keeping them; on an
    # H100 at 1.4B, 39% of stock's peak memory at 1.2x its speed (bench/RESULTS.md).
    activation_recompute: bool = False
