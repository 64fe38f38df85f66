"""tar.gz archives of checkpoint and adapter folders, with their files at the archive root."""

import tarfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath


def pack(folder: Path, archive: Path, *, extra_files: Iterable[Path] = ()) -> Path:
    """Archive the contents of `folder` (and `extra_files`, flattened to the root) into `archive`.

    Names are relative and links are stored as the files they point to (HF caches symlink their blobs),
    so the archive unpacks the same anywhere and cannot point outside its folder.
    """
    with tarfile.open(archive, "w:gz", dereference=True) as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
        for path in extra_files:
            tar.add(path, arcname=path.name)
    return archive


def _check_member(member: tarfile.TarInfo) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise ValueError(f"unsafe path in archive: {member.name!r}")
    if not (member.isfile() or member.isdir()):
        raise ValueError(f"archive member {member.name!r} is neither a file nor a folder")


def unpack(archive: Path, folder: Path) -> Path:
    """Extract `archive` into `folder`, refusing absolute paths, `..` and links."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        for member in members:
            _check_member(member)
        # The "data" filter also drops special mode bits; Pythons before 3.11.4 (Debian bookworm's 3.11.2)
        # have none, and the checks above already refuse whatever could land outside the folder.
        safety = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(folder, members=members, **safety)
    return folder
