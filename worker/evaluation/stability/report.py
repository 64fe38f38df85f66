"""The stability report of one model: λ per layer (analytic) and low-precision divergence (empirical).

`job_stability` measures a fine-tuning job's base model and its result on the same tokens, so the
report shows whether fine-tuning moved the recurrence towards instability.
"""

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from worker.engine.data import load_blocks
from worker.engine.spec import Precision
from worker.evaluation.model import load_for_eval
from worker.evaluation.stability.divergence import GROWTH_THRESHOLD, LayerDivergence, divergence
from worker.evaluation.stability.lyapunov import LayerLyapunov, NotApplicable, lyapunov_exponents, not_applicable
from worker.evaluation.stability.structure import LayerStructure, structure_checks


@dataclass(frozen=True)
class StabilityReport:
    family: str
    precision: Precision  # the low precision compared against fp32
    n_sequences: int
    seq_len: int
    layers: list[LayerLyapunov]  # the SSM layers
    divergence: list[LayerDivergence]  # every layer
    growth_threshold: float = GROWTH_THRESHOLD
    structure: list[LayerStructure] = field(default_factory=list)  # Sparse Mamba layers only
    # A hybrid's attention, MLP and expert layers, which have no λ; empty for a pure SSM model.
    lyapunov_not_applicable: list[NotApplicable] = field(default_factory=list)

    @property
    def max_lyapunov_exponent(self) -> float:
        return max(layer.lyapunov_exponent for layer in self.layers)

    @property
    def stable(self) -> bool:
        return all(layer.stable for layer in self.layers)

    @property
    def max_slope(self) -> float:
        return max(d.slope for d in self.divergence)

    @property
    def exponential_growth(self) -> bool:
        return self.max_slope > self.growth_threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "max_lyapunov_exponent": self.max_lyapunov_exponent,
            "stable": self.stable,
            "max_slope": self.max_slope,
            "exponential_growth": self.exponential_growth,
        }


def token_batch(tokenizer: Any, path: Path, *, seq_len: int = 128, n_sequences: int = 4) -> Tensor:
    """Up to `n_sequences` unpadded windows of `seq_len` tokens from a JSONL file (b, l); a file shorter
    than one window gives one shorter sequence."""
    blocks = load_blocks(path, tokenizer, seq_len)
    full = blocks.inputs[blocks.lengths == seq_len][:n_sequences]
    return full if len(full) else blocks.inputs[:1, : int(blocks.lengths[0])]


def stability_report(model: nn.Module, family: str, inputs: Tensor, precision: Precision) -> StabilityReport:
    if precision == "fp32":
        raise ValueError("the empirical check compares a low precision (bf16 or fp16) against fp32")
    return StabilityReport(
        family=family,
        precision=precision,
        n_sequences=inputs.shape[0],
        seq_len=inputs.shape[1],
        layers=lyapunov_exponents(model, inputs),
        divergence=divergence(model, inputs, precision),
        structure=structure_checks(model),
        lyapunov_not_applicable=not_applicable(model),
    )


def job_stability(
    model: str, adapter: Path, data: Path, *, precision: Precision, device: str | None = None
) -> dict[str, StabilityReport]:
    """Reports of the base model and of the fine-tuned one on the same tokens from `data`.
    A job trained in fp32 is checked against bf16, the low precision it would most likely move to."""
    low: Precision = "bf16" if precision == "fp32" else precision
    reports = {}
    # The fine-tuned model first: a broken adapter fails before any time goes into the base model.
    for name, folder in (("fine_tuned", adapter), ("base", None)):
        network, tokenizer, family = load_for_eval(model, adapter=folder, device=device)
        reports[name] = stability_report(network, family, token_batch(tokenizer, data), low)
        del network  # one model in memory at a time
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {"base": reports["base"], "fine_tuned": reports["fine_tuned"]}
