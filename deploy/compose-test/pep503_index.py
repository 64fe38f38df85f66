"""Turn a folder of wheels into a PEP 503 index that pip reads as `--index-url file:///FOLDER`.

pip reads a file:// index folder's `index.html`, and a project's page at `<normalized name>/index.html`.
"""

import re
import sys
from collections import defaultdict
from pathlib import Path


def main(folder: Path) -> None:
    projects: dict[str, list[str]] = defaultdict(list)
    for wheel in sorted(folder.glob("*.whl")):
        projects[re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()].append(wheel.name)
    for project, wheels in projects.items():
        (folder / project).mkdir(exist_ok=True)
        links = "".join(f'<a href="../{name}">{name}</a>\n' for name in wheels)
        (folder / project / "index.html").write_text(f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n")
    links = "".join(f'<a href="{project}/">{project}</a>\n' for project in sorted(projects))
    (folder / "index.html").write_text(f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
