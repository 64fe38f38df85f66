"""One evaluation, start to finish: load the model, score each multiple-choice task at every shot count,
measure the loss on a validation file, compare ICL gains against a reference evaluation's results."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.engine.precision import PrecisionPolicy
from worker.engine.spec import Precision
from worker.evaluation.model import load_for_eval
from worker.evaluation.multiple_choice import evaluate_task, icl_gain_ratios, read_task
from worker.evaluation.perplexity import file_loss


@dataclass(frozen=True)
class EvalSpec:
    model: str  # a model folder or hub id
    tasks: dict[str, Path] = field(default_factory=dict)  # task name -> multiple-choice JSONL
    shots: tuple[int, ...] = (0, 1, 3)
    adapter: Path | None = None  # what a fine-tuning job produced (adapter or full model folder)
    precision: Precision = "fp32"
    validation_path: Path | None = None  # any training-format JSONL: its mean token loss is reported
    seed: int = 1234  # picks the few-shot examples
    limit: int | None = None  # evaluate only the first `limit` examples of each task
    batch_size: int = 16
    device: str | None = None


def evaluate(spec: EvalSpec, reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """JSON-able results: {"tasks": [TaskScores.to_dict()...], "validation"?, "icl_gain_ratio"?}.
    `reference` is an earlier result of this function; the ratio of ICL gains is taken against it."""
    # Parse every task before loading the model, so a bad file fails in a second, not after the load.
    examples = {name: read_task(path) for name, path in spec.tasks.items()}
    model, tokenizer, family = load_for_eval(spec.model, adapter=spec.adapter, device=spec.device)
    policy = PrecisionPolicy(spec.precision, next(model.parameters()).device)
    tasks = [
        evaluate_task(
            model,
            tokenizer,
            task_examples,
            list(spec.shots),
            task=name,
            seed=spec.seed,
            limit=spec.limit,
            batch_size=spec.batch_size,
            autocast=policy.autocast(),
        ).to_dict()
        for name, task_examples in examples.items()
    ]
    results: dict[str, Any] = {"family": family, "precision": spec.precision, "seed": spec.seed, "tasks": tasks}
    if spec.validation_path is not None:
        loss = file_loss(model, tokenizer, spec.validation_path, precision=spec.precision, batch_size=spec.batch_size)
        results["validation"] = {"mean_loss": loss.mean_loss, "perplexity": loss.perplexity, "tokens": loss.tokens}
    if reference is not None:
        results["icl_gain_ratio"] = icl_gain_ratios(tasks, reference.get("tasks", []))
    return results
