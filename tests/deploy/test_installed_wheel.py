"""The wheel `pip install .` makes runs on its own: an API host has the package, not the source tree."""

import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
from pathlib import Path

from alembic.script import ScriptDirectory
from deployfiles import ROOT

from app.migrate import alembic_config

SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])
# What the wheel is built from; the rest of the checkout (tests, demo, docs) stays behind.
BUILD_INPUTS = ("app", "worker", "pyproject.toml", "README.md")


def run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def build_wheel(tmp_path: Path) -> Path:
    """A wheel of the project, built offline from a copy of its sources (the checkout stays clean)."""
    source = tmp_path / "source"
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-q",
        "--wheel-dir",
        wheels,
        source,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("mambaft-*.whl")
    return wheel


def fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    """A new virtualenv with the wheel installed; the dependencies are read from this environment's
    site-packages, added after the venv's own, so the installed package is the one imported."""
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    run(
        sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel, cwd=tmp_path
    )
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    own_site = Path(run(python, "-c", purelib, cwd=tmp_path).strip())
    # A plain path line: the .pth files there (this checkout's editable install among them) are not run.
    (own_site / "dependencies.pth").write_text(f"{SITE_PACKAGES}\n")
    return venv


def test_an_installed_wheel_migrates_a_new_database_and_finds_the_shipped_tasks_and_dashboard(tmp_path: Path) -> None:
    venv = fresh_venv(tmp_path, build_wheel(tmp_path))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {name: value for name, value in os.environ.items() if not name.startswith(("MAMBAFT_", "PYTHON"))}
    env["MAMBAFT_DATA_DIR"] = str(outside / "data")

    run(venv / "bin" / "mambaft", "migrate", cwd=outside, env=env)

    with sqlite3.connect(outside / "data" / "mambaft.db") as database:
        tables = {row[0] for row in database.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        (version,) = database.execute("SELECT version_num FROM alembic_version").fetchone()
    assert {"jobs", "files", "evaluations", "api_keys"} <= tables
    assert version == ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()

    lookup = (
        "import app, app.evaluations.shipped_tasks as s, app.resources as r; print(app.__file__);"
        " print(s.shipped_task('lookup')); print(r.shipped_path('ui', 'static', 'index.html'))"
    )
    package, task, dashboard = run(venv / "bin" / "python", "-c", lookup, cwd=outside, env=env).splitlines()
    assert Path(package).is_relative_to(venv)
    assert Path(task).is_relative_to(venv) and len(Path(task).read_text().splitlines()) >= 200
    assert Path(dashboard).is_relative_to(venv) and 'src="app.js"' in Path(dashboard).read_text()
