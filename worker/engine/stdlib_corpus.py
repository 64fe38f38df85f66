"""A CodeParrot-like code corpus with no download: this Python's own standard library sources.

Usage: python -m worker.engine.stdlib_corpus --out DIR [--validation-fraction 0.1] [--max-files N]
Writes DIR/train.jsonl and DIR/validation.jsonl, one {"text": <file>} per line. The split is by file,
decided by a hash of the file's path relative to the stdlib root, so it is deterministic on every
machine with the same Python and no file is in both.
"""

import argparse
import hashlib
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path

MAX_FILE_BYTES = 200_000  # generated tables and test data files are not code worth learning


@dataclass(frozen=True)
class Corpus:
    train: Path
    validation: Path
    train_files: int
    validation_files: int


def stdlib_files(root: Path | None = None) -> list[Path]:
    """The stdlib's .py files (no site-packages, no tests), sorted by relative path."""
    root = root or Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    files = [p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts)]
    small = (p for p in files if 0 < p.stat().st_size <= MAX_FILE_BYTES)
    return sorted(small, key=lambda p: p.relative_to(root).as_posix())


def in_validation(relative: str, fraction: float) -> bool:
    digest = hashlib.sha256(relative.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def build_corpus(out: Path, *, validation_fraction: float = 0.1, max_files: int | None = None) -> Corpus:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files(root)[:max_files]
    out.mkdir(parents=True, exist_ok=True)
    paths = {"train": out / "train.jsonl", "validation": out / "validation.jsonl"}
    counts = {"train": 0, "validation": 0}
    with paths["train"].open("w") as train, paths["validation"].open("w") as validation:
        for path in files:
            relative = path.relative_to(root).as_posix()
            split = "validation" if in_validation(relative, validation_fraction) else "train"
            text = path.read_text(encoding="utf-8", errors="replace")
            (validation if split == "validation" else train).write(json.dumps({"text": text}) + "\n")
            counts[split] += 1
    return Corpus(paths["train"], paths["validation"], counts["train"], counts["validation"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--validation-fraction", type=float, default=0.1)
    parser.add_argument("--max-files", type=int, default=None)
    args = parser.parse_args()
    corpus = build_corpus(args.out, validation_fraction=args.validation_fraction, max_files=args.max_files)
    print(f"{corpus.train} ({corpus.train_files} files), {corpus.validation} ({corpus.validation_files} files)")


if __name__ == "__main__":
    main()
