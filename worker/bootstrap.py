"""Create the shipped tiny base models (`mamba-tiny`, `mamba2-tiny`) in a models folder if missing.

Usage: python -m worker.bootstrap --models-dir DIR
"""

import argparse
import shutil
import tempfile
from pathlib import Path

from worker.engine.tiny_model import create_tiny_model

TINY_MODELS = {"mamba-tiny": "mamba", "mamba2-tiny": "mamba2"}


def ensure_tiny_models(models_dir: Path) -> list[Path]:
    """Return the tiny model folders, building any that is missing. Each is built in a temp folder
    beside its destination and renamed into place, so a folder that exists is complete."""
    models_dir.mkdir(parents=True, exist_ok=True)
    folders = []
    for name, family in TINY_MODELS.items():
        folder = models_dir / name
        if not folder.exists():
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=models_dir))
            tmp.chmod(0o755)  # mkdtemp makes it private; the model folder should read like any other
            try:
                create_tiny_model(tmp, family)
                tmp.rename(folder)
            except OSError:
                if not folder.exists():  # else another worker renamed its copy into place first
                    raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        folders.append(folder)
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, required=True)
    for folder in ensure_tiny_models(parser.parse_args().models_dir):
        print(folder)


if __name__ == "__main__":
    main()
