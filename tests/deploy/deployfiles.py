"""The deployment files, parsed: docker-compose.yml, .env.example and the Dockerfile's stages.

No Docker engine is needed (nor available in CI): the tests read the files the way Compose and BuildKit
would, as far as the checks need.
"""

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = ("api", "worker", "worker-cpu")
WORKERS = ("worker", "worker-cpu")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as Compose reads an env file; comments and blank lines skipped."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"not a KEY=VALUE line in {path.name}: {line!r}"
            values[key.strip()] = value.strip()
    return values


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]

    @property
    def text(self) -> str:
        return "\n".join(f"{key} {args}" for key, args in self.instructions)

    def sources(self) -> set[str]:
        """Stages this one reads from: `COPY --from=`, `RUN --mount=...,from=`."""
        return set(re.findall(r"(?:--from=|,from=)([\w.-]+)", self.text))


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: dict[str, Stage]

    def chain(self, target: str) -> list[Stage]:
        """The target and every stage it is built on or copies from."""
        seen: dict[str, Stage] = {}
        pending = [target]
        while pending:
            name = pending.pop()
            if name in seen or name not in self.stages:
                continue
            stage = seen[name] = self.stages[name]
            pending += [stage.base, *stage.sources()]
        return list(seen.values())

    def env(self, target: str) -> dict[str, str]:
        """The ENV a container of the target starts with: its own and its base stages'."""
        lineage = []
        while target in self.stages:
            lineage.append(self.stages[target])
            target = self.stages[target].base
        values = {}
        for stage in reversed(lineage):
            for args in stage.args("ENV"):
                values.update(re.findall(r"(\w+)=(\S+)", args))
        return values


def parse_dockerfile(path: Path) -> Dockerfile:
    instructions, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):  # BuildKit also drops comments inside a continuation
            continue
        current = f"{current} {line}" if current else line
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        keyword, _, args = current.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        current = ""

    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    stage = None
    for keyword, args in instructions:
        if keyword == "FROM":
            image, _, name = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], args).partition(" AS ")
            stage = stages[name.strip()] = Stage(name.strip(), image.strip())
        elif stage is None:
            assert keyword == "ARG", f"only ARG may precede the first FROM, got {keyword}"
            name, _, default = args.partition("=")
            global_args[name] = default
        else:
            stage.instructions.append((keyword, args))
    return Dockerfile(global_args, stages)


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


@cache
def env_example() -> dict[str, str]:
    return read_env_file(ROOT / ".env.example")


@cache
def dockerfile() -> Dockerfile:
    return parse_dockerfile(ROOT / "Dockerfile")
