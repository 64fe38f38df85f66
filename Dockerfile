# mambaft images. Targets:
#   api         FastAPI server; the project's base dependencies only (no torch, no CUDA)
#   worker      Celery GPU worker: CUDA torch, `.[worker]`, mamba-ssm and causal-conv1d kernels
#   worker-cpu  the same worker on CPU torch, for trying the stack on a machine without a GPU
# Build with `docker compose build`; docs/self-hosting.md tells the rest.

# The api and worker-cpu base. Any Debian-style image with python3 (3.11 or newer) and its venv module does:
# `make compose-test` builds on Debian's own (bookworm's 3.11, trixie's 3.13).
ARG PYTHON_IMAGE=python:3.12.12-slim-trixie
# CUDA_VERSION and TORCH_CUDA go together: the kernels must be compiled by the CUDA release torch was
# built with. CUDA 13.0 needs an NVIDIA driver >= 580 on the GPU hosts.
ARG CUDA_VERSION=13.0.1
ARG UBUNTU_VERSION=24.04
ARG TORCH_CUDA=cu130
# Where pip finds torch: each worker's official index by default. Where it is unreachable, a mirror of it
# stands in, or any PEP 503 index holding that torch build and its dependencies (file:///... for a folder
# inside the base image, as `make compose-test` builds the CPU worker).
ARG TORCH_CUDA_INDEX_URL=https://download.pytorch.org/whl/${TORCH_CUDA}
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
# The same torch as the Makefile's TORCH_PIN, so production trains on what the tests ran.
ARG TORCH_VERSION=2.13.0
ARG MAMBA_SSM_VERSION=2.3.2.post1
ARG CAUSAL_CONV1D_VERSION=1.7.0
# Parallel nvcc jobs for the kernels; each can take several GB of RAM.
ARG MAX_JOBS=4


# ---------- shared by api and worker-cpu ----------
FROM ${PYTHON_IMAGE} AS slim-base
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    MAMBAFT_MODELS_DIR=/models \
    MAMBAFT_DATA_DIR=/var/lib/mambaft
# A fixed uid, so the models volume is owned alike in every image that mounts it. The data dir is where a
# worker unpacks the created models it fetches from object storage (/app belongs to root).
RUN useradd --uid 10001 --create-home mambaft \
 && install -d -o mambaft -g mambaft /models /var/lib/mambaft
WORKDIR /app


# ---------- api ----------
FROM slim-base AS api-build
RUN python3 -m venv /opt/venv
COPY pyproject.toml ./
# Dependencies before the code, from pyproject alone, so a code change reuses this layer.
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt
COPY . .
# A plain install, as on any API host: the migrations and the evaluation tasks ship inside the package.
RUN pip install --no-deps .

FROM slim-base AS api
COPY --from=api-build /opt/venv /opt/venv
USER mambaft
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["mambaft", "api", "--host", "0.0.0.0", "--port", "8000"]


# ---------- worker (CUDA) ----------
# The kernels need nvcc, which only the devel image has; they leave this stage as wheels and built libraries.
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS kernels-build
ARG TORCH_VERSION
ARG TORCH_CUDA_INDEX_URL
ARG MAMBA_SSM_VERSION
ARG CAUSAL_CONV1D_VERSION
ARG MAX_JOBS
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv python3.12-dev g++ \
 && rm -rf /var/lib/apt/lists/*
RUN python3.12 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_CUDA_INDEX_URL}" \
 && pip install setuptools==84.2.1 wheel==0.48.0 packaging==26.3 ninja==1.13.2
# FORCE_BUILD: compile against this torch and CUDA instead of fetching prebuilt wheels from GitHub.
# No build isolation: their setup.py imports the torch installed above.
RUN MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE MAX_JOBS=${MAX_JOBS} \
    pip wheel --no-deps --no-build-isolation --wheel-dir /wheels \
      "causal-conv1d==${CAUSAL_CONV1D_VERSION}" "mamba-ssm==${MAMBA_SSM_VERSION}"
# Our own selective scan (worker/engine/scan_cuda.py) for each GPU generation a worker may run on: A100, A10,
# L4/Ada, H100/H200, B200, RTX 50. The worker loads the one for its GPU from MAMBAFT_KERNEL_DIR.
COPY worker /src/worker
RUN cd /src && MAMBAFT_KERNEL_DIR=/kernels python -m worker.engine.scan_cuda 80 86 89 90 100 120

# torch's wheels bring cuDNN, cuBLAS and NCCL, so the small base image (CUDA runtime, driver hooks) is enough.
# From `COPY pyproject.toml` on, this and worker-cpu take the same steps (the kernels aside), so the CPU
# build, which runs where no GPU is, exercises them (tests/deploy/test_dockerfile.py holds them equal).
FROM nvidia/cuda:${CUDA_VERSION}-base-ubuntu${UBUNTU_VERSION} AS worker
ARG TORCH_VERSION
ARG TORCH_CUDA_INDEX_URL
# gcc, libc6-dev and the Python headers stay: Triton (Mamba-2's kernels) compiles a small C launcher
# for each kernel at run time. nvcc and the CUDA headers stay behind in kernels-build.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv libpython3.12-dev gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --uid 10001 --create-home mambaft \
 && install -d -o mambaft -g mambaft /models /var/lib/mambaft
RUN python3.12 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    MAMBAFT_MODELS_DIR=/models \
    MAMBAFT_DATA_DIR=/var/lib/mambaft \
    MAMBAFT_KERNEL_DIR=/opt/mambaft/kernels
COPY --from=kernels-build /kernels /opt/mambaft/kernels
WORKDIR /app
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_CUDA_INDEX_URL}"
COPY pyproject.toml ./
# `.[worker]`'s requirements; torch is already satisfied by the build above, so pip keeps it.
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
      print("\n".join(p["dependencies"] + p["optional-dependencies"]["worker"]))' \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt
# Mounted, not copied: only the installed kernels end up in a layer.
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,from=kernels-build,source=/wheels,target=/tmp/wheels \
    pip install /tmp/wheels/*.whl
COPY . .
RUN pip install --no-deps -e .
USER mambaft
# Not `celery inspect ping`: the solo pool answers no control message while a job trains, so every busy
# worker would read unhealthy. This checks what a worker on another host most often loses: the broker.
HEALTHCHECK --interval=60s --timeout=10s --start-period=30s --retries=3 \
  CMD ["python", "-c", \
       "from app.queue import ping_broker; from app.settings import get_settings; ping_broker(settings=get_settings())"]
CMD ["mambaft", "worker"]


# ---------- worker-cpu ----------
FROM slim-base AS worker-cpu
ARG TORCH_VERSION
ARG TORCH_CPU_INDEX_URL
RUN python3 -m venv /opt/venv
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_CPU_INDEX_URL}"
COPY pyproject.toml ./
# `.[worker]`'s requirements; torch is already satisfied by the build above, so pip keeps it.
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
      print("\n".join(p["dependencies"] + p["optional-dependencies"]["worker"]))' \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt
COPY . .
RUN pip install --no-deps -e .
USER mambaft
# The GPU worker's healthcheck: why it pings the broker is told there.
HEALTHCHECK --interval=60s --timeout=10s --start-period=30s --retries=3 \
  CMD ["python", "-c", \
       "from app.queue import ping_broker; from app.settings import get_settings; ping_broker(settings=get_settings())"]
CMD ["mambaft", "worker"]
