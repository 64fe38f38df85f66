"""Files shipped inside the `app` package: the Alembic config and migrations, the evaluation tasks.

They travel with the package (pyproject.toml's package-data), so an installed mambaft finds them
without its source tree.
"""

from importlib.resources import files
from pathlib import Path


def shipped_path(*parts: str) -> Path:
    """A file or folder shipped in the `app` package, on disk (Alembic and the worker open them by path)."""
    resource = files("app").joinpath(*parts)
    # pip installs a package as files; only a zipped import would give something else.
    if not isinstance(resource, Path):
        raise TypeError(f"mambaft must be installed as files, not imported from an archive: {resource}")
    return resource
