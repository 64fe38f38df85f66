"""The `mambaft` admin commands and the serve command's refusal to expose an unauthenticated API."""

import subprocess
from pathlib import Path

import pytest

from .factories import MAMBAFT, clean_env


def mambaft(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MAMBAFT, *args], env=clean_env(**env), capture_output=True, text=True, timeout=120)


def test_create_key_prints_the_key_once_and_revoke_key_revokes_it(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    assert mambaft("migrate", *data).returncode == 0
    created = mambaft("create-key", "--owner", "acme", "--name", "ci", *data)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("mft-") and "\n" not in key  # stdout is the key alone, for scripts
    key_id = created.stderr.split()[3]  # "Created API key <id> for owner ..."

    assert mambaft("revoke-key", key_id, *data).returncode == 0
    unknown = mambaft("revoke-key", "key-doesnotexist", *data)
    assert unknown.returncode != 0 and "key-doesnotexist" in unknown.stderr


@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_create_key_on_a_new_data_dir_migrates_it_and_the_key_works(tmp_path: Path, folder: str) -> None:
    data_dir = tmp_path / "var"
    if folder == "empty":
        data_dir.mkdir()

    created = mambaft("create-key", "--owner", "acme", "--data-dir", str(data_dir))

    assert created.returncode == 0, created.stderr
    key_id = created.stderr.split()[3]
    assert mambaft("revoke-key", key_id, "--data-dir", str(data_dir)).returncode == 0  # the key was stored


@pytest.mark.parametrize("owner", ["", "a" * 129, "ac\u202eme"], ids=["empty", "129-chars", "bidi-override"])
def test_create_key_refuses_an_empty_or_unprintable_owner_with_one_line(tmp_path: Path, owner: str) -> None:
    data_dir = tmp_path / "var"

    refused = mambaft("create-key", "--owner", owner, "--data-dir", str(data_dir))

    assert refused.returncode == 2
    assert refused.stderr.startswith("mambaft: The owner must") and refused.stderr.count("\n") == 1, refused.stderr
    assert not data_dir.exists()  # refused before touching anything


def test_serve_refuses_a_public_bind_with_auth_disabled(tmp_path: Path) -> None:
    result = mambaft(
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        "1",
        "--data-dir",
        str(tmp_path / "var"),
        MAMBAFT_AUTH_DISABLED="true",
    )
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 with authentication disabled" in result.stderr
    assert not (tmp_path / "var").exists()  # refused before touching anything
