"""Only safe formats are loaded: no pickle, no `torch.load` without `weights_only=True`, no remote code;
and adapter archives cannot write outside the folder they are unpacked into."""

import io
import re
import tarfile
from pathlib import Path

import pytest

from app.archive import pack, unpack

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for folder in ("app", "worker") for p in (ROOT / folder).rglob("*.py"))
# Each pattern names a way to run code hidden in a data file.
UNSAFE = {
    "pickle": re.compile(r"\b(c?pickle|dill|joblib|cloudpickle)\.loads?\("),
    "torch.load without weights_only=True": re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)"),
    "trust_remote_code=True": re.compile(r"trust_remote_code\s*=\s*True"),
    "unsafe yaml": re.compile(r"yaml\.(unsafe_)?load\((?![^)]*SafeLoader)"),
    "numpy allow_pickle": re.compile(r"allow_pickle\s*=\s*True"),
}


def unsafe_uses(text: str) -> list[str]:
    return [name for name, pattern in UNSAFE.items() if pattern.search(text)]


def test_the_scan_sees_the_sources() -> None:
    assert len(SOURCES) > 20 and ROOT / "app" / "archive.py" in SOURCES


@pytest.mark.parametrize(
    "line",
    [
        "torch.load(path)",
        "torch.load(path, map_location='cpu')",
        "pickle.load(f)",
        "x = pickle.loads(b)",
        "AutoModel.from_pretrained(m, trust_remote_code=True)",
        "yaml.load(s)",
        "np.load(p, allow_pickle=True)",
    ],
)
def test_the_scan_catches_each_unsafe_load(line: str) -> None:
    assert unsafe_uses(line)


def test_the_scan_lets_safe_loads_through() -> None:
    assert not unsafe_uses("torch.load(p, weights_only=True)\nfrom_pretrained(m, trust_remote_code=False)")


def test_no_source_loads_an_unsafe_format() -> None:
    found = {str(p.relative_to(ROOT)): uses for p in SOURCES if (uses := unsafe_uses(p.read_text()))}

    assert found == {}


def crafted_archive(path: Path, *members: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            data = b"pwned" if member.isfile() else None
            if data is not None:
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    "evil",
    [
        member("../x"),
        member("adapter/../../x"),
        member("/tmp/mambaft-absolute-x"),
        member("link", tarfile.SYMTYPE, "/etc/passwd"),
        member("link", tarfile.SYMTYPE, "../outside"),
        member("hard", tarfile.LNKTYPE, "/etc/passwd"),
        member("dev", tarfile.CHRTYPE),
        member("fifo", tarfile.FIFOTYPE),
    ],
    ids=lambda m: f"{m.name}->{m.linkname}" if m.linkname else m.name,
)
def test_a_crafted_archive_cannot_escape_the_unpack_folder(tmp_path: Path, evil: tarfile.TarInfo) -> None:
    archive = crafted_archive(tmp_path / "evil.tar.gz", member("adapter_config.json"), evil)
    target = tmp_path / "deep" / "unpack"
    before = {p for p in tmp_path.rglob("*")}

    with pytest.raises(ValueError):
        unpack(archive, target)

    # Refused before writing anything: no member, not even the harmless one, is extracted.
    assert {p for p in tmp_path.rglob("*")} - before <= {tmp_path / "deep", target}
    assert not Path("/tmp/mambaft-absolute-x").exists()


def test_packed_archives_hold_only_relative_regular_files(tmp_path: Path) -> None:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"w")
    (tmp_path / "outside.json").write_text("{}")
    (folder / "linked.json").symlink_to(tmp_path / "outside.json")

    archive = pack(folder, tmp_path / "a.tar.gz")

    with tarfile.open(archive) as tar:
        members = tar.getmembers()
    assert sorted(m.name for m in members) == ["adapter_model.safetensors", "linked.json"]
    assert all(m.isfile() and not m.name.startswith("/") and ".." not in m.name for m in members)
    assert unpack(archive, tmp_path / "out").joinpath("linked.json").read_text() == "{}"


@pytest.fixture
def python_without_tar_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    """tarfile as Python 3.11.0 to 3.11.3 have it (Debian bookworm's 3.11.2): no extraction filters."""
    extractall = tarfile.TarFile.extractall

    def extractall_without_filter(self: tarfile.TarFile, *args: object, **kwargs: object) -> None:
        if "filter" in kwargs:
            raise TypeError("TarFile.extractall() got an unexpected keyword argument 'filter'")
        extractall(self, *args, **kwargs)

    monkeypatch.delattr(tarfile, "data_filter")
    monkeypatch.setattr(tarfile.TarFile, "extractall", extractall_without_filter)


@pytest.mark.usefixtures("python_without_tar_filters")
def test_archives_unpack_on_a_python_without_tar_filters_and_crafted_ones_are_still_refused(tmp_path: Path) -> None:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")

    assert unpack(pack(folder, tmp_path / "a.tar.gz"), tmp_path / "out").joinpath("adapter_config.json").exists()
    with pytest.raises(ValueError):
        unpack(crafted_archive(tmp_path / "evil.tar.gz", member("../x")), tmp_path / "evil")
    assert not (tmp_path / "x").exists()
