"""The multiple-choice tasks shipped with mambaft, by name; the API checks them and the worker reads them."""

from pathlib import Path

from app.resources import shipped_path

# Written by demo/tasks/make_tasks.py.
SHIPPED_TASKS = shipped_path("evaluations", "tasks")


def shipped_task(name: str) -> Path | None:
    """The file of a shipped multiple-choice task, or None."""
    path = SHIPPED_TASKS / f"{name}.jsonl"
    return path if name.isidentifier() and path.is_file() else None
