"""What the job task hands the training engine, and what it gets back.

Plain dataclasses with no torch import, so the task module and tests can build them cheaply. The LoRA
settings and the hyperparameters' defaults are the job contract's (app/jobs/contract.py): what the API
stores for a job is what the engine runs.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from app.jobs.contract import HyperparameterSpec, LoraSpec

Precision = Literal["fp32", "fp16", "bf16"]


@dataclass(frozen=True)
class TrainSpec:
    model: str  # a folder in HF format or a hub id
    train_path: Path
    output_dir: Path
    precision: Precision = "fp32"
    lora: LoraSpec | None = field(default_factory=LoraSpec)  # None: full fine-tuning
    validation_path: Path | None = None
    n_epochs: int = HyperparameterSpec.n_epochs
    batch_size: int = HyperparameterSpec.batch_size
    learning_rate: float = HyperparameterSpec.learning_rate
    max_seq_len: int = HyperparameterSpec.max_seq_len
    seed: int = 0
    warmup_steps: int = 0
    checkpoint_every: int = 50
    # A checkpoint folder written by an earlier attempt of the same job: resume exactly from it.
    resume_from: Path | None = None
    device: str | None = None  # None: cuda when available, else cpu
    # On CUDA, replay forward + backward as one CUDA graph (fixed-shape batches; no launch overhead).
    cuda_graphs: bool = True
    activation_recompute: bool = HyperparameterSpec.activation_recompute
    # Bytes a training step may use on the device (GPU memory, or RAM on the CPU); a job whose estimated
    # step needs more fails before training. None: a share of what the device has free (memory.py).
    memory_budget_bytes: int | None = None


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    epoch: int
    loss: float
    learning_rate: float
    tokens_per_second: float
    eta_seconds: float
    trained_tokens: int
    skipped_steps: int = 0  # fp16 overflow steps skipped by the loss scaler
    peak_memory_bytes: int | None = None
    steps_per_second: float = 0.0
    step_seconds: float = 0.0  # this step's forward, backward and optimizer step, as tokens_per_second counts it

    def row(self) -> dict[str, Any]:
        """The step's line of the job's metrics: a row of its results CSV, a checkpoint's metrics."""
        return {
            "step": self.step,
            "train_loss": self.loss,
            "learning_rate": self.learning_rate,
            "tokens_per_second": self.tokens_per_second,
            "peak_memory_bytes": self.peak_memory_bytes,
        }


@dataclass(frozen=True)
class TrainResult:
    adapter_dir: Path  # PEFT adapter folder (or full weights for full fine-tuning)
    trained_tokens: int
    steps: int
    metrics: dict[str, Any]
    merged_dir: Path | None = None  # base weights with the adapter merged in, when asked for
    # Every step's `Progress.row()`, oldest first, across resumes.
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TrainHooks:
    """Callbacks the job task passes in; all optional so tests can run the engine bare."""

    on_progress: Callable[[Progress], None] = lambda p: None
    # Called with a finished checkpoint folder and its step, after it is complete on disk.
    on_checkpoint: Callable[[Path, int], None] = lambda path, step: None
    # Polled between steps; True stops training early (cancel or graceful shutdown).
    should_stop: Callable[[], bool] = lambda: False
    on_message: Callable[[str], None] = lambda m: None


class TrainingStopped(Exception):
    """Raised by the engine when `should_stop` returned True; `checkpoint` is the last one written."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        super().__init__(f"training stopped at step {step}")
        self.step = step
        self.checkpoint = checkpoint


class EngineFailure(Exception):
    """A job the engine refuses or gives up on for a reason of its own; `code` is what the client sees.

    Every failure the worker can name is one of these (the worker's own too); any other exception is
    reported under one generic code per kind of work."""

    code = "training_failed"


class ModelLoadFailed(EngineFailure):
    """The base model or its tokenizer could not be loaded (missing, unsupported, unreadable)."""

    code = "model_load_failed"


class InvalidDataFile(EngineFailure, ValueError):
    """A training-format file the engine cannot use: a line it cannot read, or nothing to train on."""

    code = "invalid_training_file"


class InsufficientMemory(EngineFailure):
    """One training step needs more memory than the device has for it (estimated, or it ran out)."""

    code = "insufficient_memory"


class TrainingDiverged(EngineFailure):
    """The loss or the gradients stopped being finite."""

    code = "training_diverged"


class LoraTargetNotTraining(EngineFailure):
    """A LoRA tensor got no gradient: the model's forward bypasses that adapter, which would never train."""

    code = "lora_target_not_training"
