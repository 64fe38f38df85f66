"""The Dockerfile's targets: the api image has no torch (and needs none), the worker image has the kernels."""

import json
import re
import tomllib

import pytest
from deployfiles import ROOT, dockerfile
from importprobe import import_without

# What only the worker image has; the API must import without any of it.
WORKER_ONLY = ("torch", "transformers", "peft", "mamba_ssm", "causal_conv1d", "triton")
FINAL_TARGETS = ("api", "worker", "worker-cpu")


def chain_text(target: str) -> str:
    return "\n".join(stage.text for stage in dockerfile().chain(target))


def test_dockerfile_has_the_three_targets():
    assert set(FINAL_TARGETS) <= set(dockerfile().stages)


def test_every_version_is_pinned():
    for name, default in dockerfile().global_args.items():
        assert default, f"ARG {name} has no default"
    for stage in dockerfile().stages.values():
        if stage.base in dockerfile().stages:
            continue
        image, _, tag = stage.base.rpartition(":")
        assert image and tag and tag != "latest", f"stage {stage.name}: unpinned base image {stage.base}"


def test_base_dependencies_are_torch_free():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].replace("-", "_") for requirement in dependencies}
    assert not names & set(WORKER_ONLY)


def test_api_image_installs_only_the_base_dependencies():
    text = chain_text("api")
    assert '["project"]["dependencies"]' in text
    assert "optional-dependencies" not in text
    assert "[worker]" not in text
    assert "torch" not in text
    assert "nvidia/cuda" not in text


def test_worker_kernels_are_built_with_nvcc_and_only_their_wheels_reach_the_image():
    stages = dockerfile().stages
    worker = stages["worker"]
    builders = [stages[name] for name in worker.sources()]
    assert [stage.name for stage in builders] == ["kernels-build"]
    kernels = builders[0]
    assert kernels.base.startswith("nvidia/cuda:") and "-devel-" in kernels.base
    assert "pip wheel" in kernels.text
    assert '"causal-conv1d==${CAUSAL_CONV1D_VERSION}" "mamba-ssm==${MAMBA_SSM_VERSION}"' in kernels.text
    # The runtime image: no devel base, no compiler for CUDA, and from the builder only /wheels.
    assert worker.base.startswith("nvidia/cuda:") and "devel" not in worker.base
    assert "from=kernels-build,source=/wheels," in worker.text
    assert "pip install /tmp/wheels/*.whl" in worker.text
    assert not re.search(r"cuda-nvcc|cuda-toolkit|build-essential|g\+\+", worker.text)
    # Our selective scan is built there too, for every GPU generation, where the worker looks for it.
    assert "MAMBAFT_KERNEL_DIR=/kernels python -m worker.engine.scan_cuda 80 86 89 90 100 120" in kernels.text
    assert "COPY --from=kernels-build /kernels /opt/mambaft/kernels" in worker.text
    assert "MAMBAFT_KERNEL_DIR=/opt/mambaft/kernels" in worker.text


def test_worker_installs_cuda_torch_and_the_worker_extra():
    args = dockerfile().global_args
    # The official indexes by default; a build arg points pip at a mirror where they are unreachable.
    assert args["TORCH_CUDA_INDEX_URL"] == "https://download.pytorch.org/whl/${TORCH_CUDA}"
    assert args["TORCH_CPU_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    worker = dockerfile().stages["worker"]
    assert 'pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_CUDA_INDEX_URL}"' in worker.text
    assert '["optional-dependencies"]["worker"]' in worker.text
    cpu = chain_text("worker-cpu")
    assert 'pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_CPU_INDEX_URL}"' in cpu
    assert '["optional-dependencies"]["worker"]' in cpu
    assert "mamba-ssm" not in cpu and "nvidia/cuda" not in cpu


def test_the_cpu_worker_takes_the_gpu_workers_steps_so_its_build_covers_them():
    # The GPU image cannot be built without CUDA base images; `make compose-test` builds worker-cpu instead.
    def project_steps(target: str) -> list[tuple[str, str]]:
        instructions = dockerfile().stages[target].instructions
        start = instructions.index(("COPY", "pyproject.toml ./"))
        return [step for step in instructions[start:] if "from=kernels-build" not in step[1]]

    assert project_steps("worker") == project_steps("worker-cpu")
    assert ("RUN", "pip install --no-deps -e .") in project_steps("worker")


def test_torch_pins_agree_with_the_makefile_and_the_cuda_image():
    args = dockerfile().global_args
    makefile_pin = re.search(r"^TORCH_PIN \?= torch==(\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert makefile_pin and args["TORCH_VERSION"] == makefile_pin.group(1)
    # The kernels must be compiled by the CUDA release this torch build was made with.
    major, minor, _patch = args["CUDA_VERSION"].split(".")
    assert args["TORCH_CUDA"] == f"cu{major}{minor}"


@pytest.mark.parametrize("target", FINAL_TARGETS)
def test_final_image_runs_as_a_non_root_user_with_a_healthcheck(target):
    stage = dockerfile().stages[target]
    users = stage.args("USER")
    assert users and users[-1] not in ("root", "0")
    assert stage.args("HEALTHCHECK")


@pytest.mark.parametrize("target", FINAL_TARGETS)
def test_the_images_user_owns_its_data_dir(target):
    # A worker unpacks the created models it fetches from object storage under the data dir; the default,
    # ./var under the root-owned /app, could not be created by the image's user.
    data_dir = dockerfile().env(target).get("MAMBAFT_DATA_DIR")
    assert data_dir and not data_dir.startswith("/app"), data_dir
    user = dockerfile().stages[target].args("USER")[-1]
    lineage_runs = "\n".join(stage.text for stage in dockerfile().chain(target))
    assert f"install -d -o {user} -g {user}" in lineage_runs and data_dir in lineage_runs


def test_api_healthcheck_asks_healthz_without_curl():
    api = dockerfile().stages["api"]
    (healthcheck,) = api.args("HEALTHCHECK")
    assert "urllib.request.urlopen('http://127.0.0.1:8000/healthz'" in healthcheck
    assert json.loads(api.args("CMD")[-1]) == ["mambaft", "api", "--host", "0.0.0.0", "--port", "8000"]
    assert api.args("EXPOSE") == ["8000"]


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_images():
    ignored = set((ROOT / ".dockerignore").read_text().splitlines())
    assert {".venv", "var", ".git", "tests", ".env"} <= ignored
    # The migrations and the evaluation tasks ship inside app/ (app/resources.py).
    assert not {"app", "worker"} & ignored


@pytest.mark.parametrize("module", ["app.main", "app.cli", "app.supervisor"])
def test_api_imports_without_torch(module, tmp_path):
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.exists():
        pytest.skip(f"{path.relative_to(ROOT)} does not exist yet")
    result = import_without([module], WORKER_ONLY, tmp_path)
    assert result.returncode == 0, result.stderr
