"""The multiple-choice tasks shipped with mambaft, by name; the API checks them and the worker reads them."""

from pathlib import Path

SHIPPED_TASKS = Path(__file__).resolve().parents[2] / "demo" / "tasks"
TRAIN_SUFFIX = "_train"  # demo/tasks/<task>_train.jsonl is fine-tuning data, not a task


def shipped_task(name: str) -> Path | None:
    """The file of a shipped multiple-choice task, or None."""
    path = SHIPPED_TASKS / f"{name}.jsonl"
    ok = name.isidentifier() and not name.endswith(TRAIN_SUFFIX) and path.is_file()
    return path if ok else None
