"""Fine-tuning the tiny model on a shipped task's train file raises its accuracy on that task."""

from pathlib import Path

from app.evaluations.shipped_tasks import shipped_task
from worker.evaluation.model import load_for_eval
from worker.evaluation.multiple_choice import evaluate_task, read_task
from worker.evaluation.perplexity import file_loss


def test_finetuning_on_lookup_raises_zero_shot_accuracy(tiny_mamba: Path, lookup_adapter: Path) -> None:
    examples = read_task(shipped_task("lookup"))
    base, tokenizer, _ = load_for_eval(str(tiny_mamba))
    tuned, _, _ = load_for_eval(str(tiny_mamba), adapter=lookup_adapter)
    before = evaluate_task(base, tokenizer, examples, [], limit=40, batch_size=40).acc[0]
    after = evaluate_task(tuned, tokenizer, examples, [], limit=40, batch_size=40).acc[0]
    assert before < 0.5  # four choices: chance is 0.25
    assert after >= before + 0.25, (before, after)


def test_file_loss_drops_after_finetuning(
    tiny_mamba: Path, lookup_adapter: Path, tasks_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "few.jsonl"
    path.write_text("\n".join((tasks_dir / "lookup_train.jsonl").read_text().splitlines()[:30]) + "\n")
    base, tokenizer, _ = load_for_eval(str(tiny_mamba))
    tuned, _, _ = load_for_eval(str(tiny_mamba), adapter=lookup_adapter)
    before, after = file_loss(base, tokenizer, path), file_loss(tuned, tokenizer, path)
    # Only completions count: " colour" + EOS, 4 to 7 tokens a line.
    assert 30 * 4 <= before.tokens == after.tokens <= 30 * 7
    assert before.perplexity > 100 and after.mean_loss < before.mean_loss - 1.0, (before, after)
