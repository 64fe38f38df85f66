"""The memory budget a CPU worker gives a job: the host's MemAvailable, or a container's cgroup limit."""

from pathlib import Path

import pytest
import torch

from worker.engine import memory
from worker.engine.memory import GiB


def fake_cgroup(root: Path, limit: str, usage: int, inactive_file: int) -> Path:
    root.mkdir()
    (root / "memory.max").write_text(f"{limit}\n")
    (root / "memory.current").write_text(f"{usage}\n")
    (root / "memory.stat").write_text(f"anon {usage - inactive_file}\ninactive_file {inactive_file}\n")
    return root


def test_a_containers_cgroup_limit_sets_the_budget_with_its_reclaimable_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if memory.host_available_bytes() < 4 * GiB:
        pytest.skip("the host itself has less free memory than the container limit below")
    monkeypatch.setattr(memory, "CGROUP_ROOT", fake_cgroup(tmp_path / "cg", str(4 * GiB), 1 * GiB, GiB // 2))

    assert memory.host_available_bytes() == 3.5 * GiB  # 4 GiB limit - 1 GiB used + 0.5 GiB of page cache
    assert memory.device_budget(torch.device("cpu")) == int(3.5 * GiB * memory.BUDGET_FRACTION["cpu"])


def test_without_a_cgroup_limit_the_budget_is_a_share_of_memavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "CGROUP_ROOT", fake_cgroup(tmp_path / "cg", "max", 1 * GiB, 0))
    available = next(
        int(line.split()[1]) * 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemAvailable:")
    )

    assert memory.host_available_bytes() == pytest.approx(available, rel=0.05)
