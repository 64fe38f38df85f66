"""Import modules in a fresh interpreter where some packages cannot be imported, as on a host without them.

A finder placed first on sys.meta_path refuses the blocked packages even though this test environment
has them installed, so an import that reaches one fails, naming the chain that led there.
"""

import os
import subprocess
import sys
from pathlib import Path

from deployfiles import ROOT

PROBE = """
import importlib, sys
modules, blocked = sys.argv[1].split(","), set(sys.argv[2:])

class NotOnThisHost:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not on this host)", name=name)
        return None

sys.meta_path.insert(0, NotOnThisHost())
for module in modules:
    importlib.import_module(module)
leaked = sorted(name for name in sys.modules if name.partition(".")[0] in blocked)
assert not leaked, leaked
"""


def import_without(modules: list[str], blocked: tuple[str, ...], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Import `modules` with `blocked` unimportable, in a data dir of its own; the run's result."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("MAMBAFT_")}
    env |= {"MAMBAFT_DATA_DIR": str(cwd), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(modules), *blocked],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
