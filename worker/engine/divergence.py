"""When a run has diverged: its loss, or its gradient norm, was not finite for several steps in a row.

One bad step can be noise (a batch that overflows once); MAX_NONFINITE_STEPS in a row is a run that
will not come back, and training on only wastes the worker. Under fp16 a non-finite gradient is an
overflow the loss scaler skips and recovers from by lowering its scale, so there only the loss counts.
"""

import math
from dataclasses import dataclass

from worker.engine.spec import TrainingDiverged

MAX_NONFINITE_STEPS = 3


@dataclass
class DivergenceCheck:
    # fp16: non-finite gradients are the loss scaler's to skip, not a sign of divergence.
    loss_scaling: bool
    limit: int = MAX_NONFINITE_STEPS
    _in_a_row: int = 0

    def observe(self, step: int, loss: float, grad_norm: float) -> None:
        """Record step `step`'s loss and gradient norm; raise TrainingDiverged after `limit` bad steps."""
        bad = not math.isfinite(loss) or (not math.isfinite(grad_norm) and not self.loss_scaling)
        self._in_a_row = self._in_a_row + 1 if bad else 0
        if self._in_a_row >= self.limit:
            what = "loss" if not math.isfinite(loss) else "gradient norm"
            raise TrainingDiverged(
                f"training diverged: the {what} was not finite for {self.limit} steps in a row (steps "
                f"{step - self.limit + 1}-{step}, last loss {loss}); no adapter was published. Lower "
                "hyperparameters.learning_rate or lora.alpha, or train in bf16 or fp32 instead of fp16"
            )
