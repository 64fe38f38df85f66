"""The README's walkthrough as a new user runs it: its shell block (curl and jq against `mambaft serve`),
which ends asking the base and the tuned model over HTTP, then its Python snippet; both must show the
tuned model's right answer where the base model's is wrong.

The blocks are read from README.md (each follows a `<!-- walkthrough: shell|python ... -->` comment), so
the README cannot drift from what works. They run as written but for two substitutions:
- the `API=` line's port becomes the test server's (a free one: 8000 may be taken);
- they run in a temp folder holding a copy of `demo/` and the server's data dir `var/`, as the repository
  root holds them under `make run`.

It trains a real job: about 2 minutes in all on an idle 2-core machine (start, job, snippet), several
times that while the machine is busy with other work.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .service import Service

ROOT = Path(__file__).resolve().parents[2]
WALKTHROUGH_TIMEOUT_S = 900
ANSWER = "teal"  # to "What colour is the mamba-ft logo?", the first fact of demo/make_demo_data.py


def walkthrough_block(readme: str, language: str) -> str:
    """The fenced block right after the README's `<!-- walkthrough: LANGUAGE ... -->` comment."""
    match = re.search(rf"<!-- walkthrough: {language}\b[^>]*-->\n```\w*\n(.*?)\n```", readme, re.S)
    assert match, f"README.md has no code block marked <!-- walkthrough: {language} -->"
    return match.group(1)


def run(args: list[str], cwd: Path, service: Service) -> str:
    ran = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=WALKTHROUGH_TIMEOUT_S)
    assert ran.returncode == 0, f"{args[0]} exited {ran.returncode}\n{ran.stdout}\n{ran.stderr}\n{service.log_tail()}"
    return ran.stdout


def test_the_readme_walkthrough_ends_with_the_tuned_model_answering_what_the_base_cannot(
    embedded: Service, tmp_path: Path
) -> None:
    missing = [tool for tool in ("curl", "jq") if shutil.which(tool) is None]
    assert not missing, f"the README's walkthrough needs {missing} installed"
    readme = (ROOT / "README.md").read_text()
    shell, replaced = re.subn(
        r"^API=http://127\.0\.0\.1:8000/v1$", f"API={embedded.url}/v1", walkthrough_block(readme, "shell"), flags=re.M
    )
    assert replaced == 1, "the walkthrough's shell block no longer sets API=http://127.0.0.1:8000/v1"
    assert embedded.url.startswith("http://127.0.0.1:")  # the README's host: only the port differs
    shutil.copytree(ROOT / "demo", tmp_path / "demo")
    embedded.wait_ready(worker=True)

    shell_output = run(["bash", "-euo", "pipefail", "-c", shell], tmp_path, embedded)
    assert '"status": "succeeded"' in shell_output, shell_output
    # Step 6: the completions of the base model, then of the tuned one, as JSON strings.
    base_answer, tuned_answer = (json.loads(line) for line in shell_output.splitlines()[-2:])
    assert tuned_answer.strip() == ANSWER and base_answer.strip() != ANSWER, shell_output

    printed = run([sys.executable, "-c", walkthrough_block(readme, "python")], tmp_path, embedded).splitlines()
    assert f"tuned: '{ANSWER}'" in readme  # the README shows the answer this test expects
    assert printed[-1] == f"tuned: '{ANSWER}'", printed
    assert printed[-2].startswith("base: ") and printed[-2] != f"base:  '{ANSWER}'", printed
