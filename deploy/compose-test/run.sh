#!/usr/bin/env bash
# `make compose-test`: build the images, run docker-compose.yml's stack on this machine, use the service
# through its API as a client would (scenario.py), then tear down everything it started, on failure too.
#
#   deploy/compose-test/run.sh            every step, each under a time limit
#   deploy/compose-test/run.sh STEP...    only those steps, to iterate on one (`run.sh down` tears down)
#
# Needs root, Debian's mirror and PyPI, and no container registry: the engine is Debian's docker.io, Compose
# v2 and buildx come from Debian trixie's packages, the base images are debootstrapped and `docker import`ed,
# and postgres, redis and MinIO are stand-ins (standins/) built under the compose file's own image names, so
# docker-compose.yml runs unchanged.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# Kept between runs: the debootstrapped roots and torch's wheels (Docker keeps the images built from them).
CACHE=${COMPOSE_TEST_CACHE:-/var/cache/mambaft-compose-test}
# This run's files: .env, the compose override, dockerd's pid and log.
RUN_DIR=${COMPOSE_TEST_RUN_DIR:-/tmp/mambaft-compose-test}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Debian has no Python 3.12: the API image builds on trixie's 3.13, the CPU worker on bookworm's 3.11 (the
# Python of this machine's CPU torch wheel), so the images are shown to build on either.
API_BASE=local/python:3.13-trixie
WORKER_BASE=local/python:3.11-bookworm-torch
TORCH_PIN=torch==$(sed -n 's/^ARG TORCH_VERSION=//p' "$REPO/Dockerfile")
# A project name of its own: the test never touches a `mambaft` stack running on the same machine.
PROJECT=mambaft-compose-test

say() { printf '== %(%H:%M:%S)T  %s\n' -1 "$*"; }
# `run.sh compose ARGS...` is how scenario.py drives the stack.
compose() {
  docker compose -p "$PROJECT" --profile cpu --project-directory "$REPO" --env-file "$RUN_DIR/env" \
    -f "$REPO/docker-compose.yml" -f "$RUN_DIR/override.yml" "$@"
}

engine() {  # Debian's Docker engine and debootstrap, unless installed
  command -v dockerd >/dev/null && command -v debootstrap >/dev/null && return
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io iptables debootstrap >/dev/null
}

rootfs() {  # SUITE: a minimal Debian with python3, trusting this machine's CAs (HTTPS egress may be re-signed)
  local dir=$CACHE/rootfs-$1
  if [ ! -x "$dir/usr/bin/python3" ]; then
    rm -rf "$dir.tmp"
    debootstrap --variant=minbase --include=ca-certificates,python3,python3-venv "$1" "$dir.tmp" "$MIRROR" \
      >"$CACHE/debootstrap-$1.log"
    mv "$dir.tmp" "$dir"
  fi
  cp /usr/local/share/ca-certificates/*.crt "$dir/usr/local/share/ca-certificates/" 2>/dev/null || true
  chroot "$dir" update-ca-certificates >/dev/null
}

roots() {
  mkdir -p "$CACHE"
  rootfs trixie & local trixie=$!
  rootfs bookworm
  wait $trixie
}

daemon() {  # dockerd, unless one runs; Compose v2 and buildx from trixie, unless installed
  mkdir -p "$RUN_DIR"
  if ! docker info >/dev/null 2>&1; then
    # What dockerd changes in the host's network, to put back when it stops.
    iptables -S FORWARD | sed -n 's/^-P FORWARD //p' >"$RUN_DIR/forward-policy"
    cat /proc/sys/net/ipv4/ip_forward >"$RUN_DIR/ip-forward"
    # Its own session: the daemon outlives this step (and `timeout`, which ends the step's process group).
    setsid dockerd --storage-driver=overlay2 >"$RUN_DIR/dockerd.log" 2>&1 </dev/null &
    echo $! >"$RUN_DIR/dockerd.pid"
    for _ in $(seq 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null
  fi
  if ! docker compose version >/dev/null 2>&1 || ! docker buildx version >/dev/null 2>&1; then
    local root=$CACHE/rootfs-trixie
    chroot "$root" sh -c 'apt-get update -qq && cd /tmp && apt-get download -qq docker-compose docker-buildx'
    dpkg -i "$root"/tmp/docker-compose_*.deb "$root"/tmp/docker-buildx_*.deb >/dev/null
    rm -f "$root"/tmp/*.deb "$root"/var/lib/apt/lists/*_Packages*
  fi
  docker compose version
}

import() {  # DIR TAG: a root filesystem as an image, as python:*-slim would be
  docker image inspect "$2" >/dev/null 2>&1 && return
  tar --numeric-owner --exclude=./var/lib/apt/lists/* --exclude=./var/cache/apt/archives/*.deb -C "$1" -c . |
    docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$2" >/dev/null
}

bases() {
  import "$CACHE/rootfs-trixie" "$API_BASE"
  # The worker's base also carries a PEP 503 index of this machine's CPU torch wheel and its dependencies
  # (pip resolves the pin to that file here, as `make setup` does), which TORCH_CPU_INDEX_URL points at.
  local index=$CACHE/rootfs-bookworm/opt/torch-index
  if [ ! -f "$index/torch/index.html" ]; then
    python3 -m pip download -q -d "$index" "$TORCH_PIN"
    python3 "$HERE/pep503_index.py" "$index"
  fi
  import "$CACHE/rootfs-bookworm" "$WORKER_BASE"
}

config() {  # .env with random secrets, and an override: API on a free loopback port, the test's base images
  mkdir -p "$RUN_DIR"
  sed "s/change-me-postgres/$(openssl rand -hex 24)/g; s/change-me-minio/$(openssl rand -hex 24)/g" \
    "$REPO/.env.example" >"$RUN_DIR/env"
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  echo "$port" >"$RUN_DIR/port"
  sed "s|@RUN_DIR@|$RUN_DIR|g; s|@PORT@|$port|g; s|@API_BASE@|$API_BASE|g; s|@WORKER_BASE@|$WORKER_BASE|g" \
    "$HERE/override.yml" >"$RUN_DIR/override.yml"
}

image_of() {  # SERVICE: the image name docker-compose.yml gives it
  compose config --format json | python3 -c "import json, sys; print(json.load(sys.stdin)['services']['$1']['image'])"
}

build() {
  export DOCKER_BUILDKIT=1
  for service in postgres redis minio minio-init; do
    docker build -q --build-arg BASE="$API_BASE" --target "$service" -t "$(image_of $service)" "$HERE/standins" >/dev/null
  done &
  local standins=$!
  compose build -q api worker-cpu
  wait $standins
}

up() {  # returns once the backing services are healthy and migrated, and the API and the worker started
  compose up -d
  compose ps -a --format '{{.Service}}: {{.Status}}'
}

scenario() {
  python3 "$HERE/scenario.py" "http://127.0.0.1:$(cat "$RUN_DIR/port")" "$0"
}

down() {  # the stack with its volumes and network; dockerd and what it left in the network, if we started it
  if [ -f "$RUN_DIR/override.yml" ] && docker info >/dev/null 2>&1; then
    compose down -v --remove-orphans --timeout 30 || true
  fi
  [ -f "$RUN_DIR/dockerd.pid" ] || return 0
  local pid
  pid=$(cat "$RUN_DIR/dockerd.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  rm -f "$RUN_DIR/dockerd.pid"
  sh "$HERE/forget-docker-network.sh" "$(cat "$RUN_DIR/forward-policy")" "$(cat "$RUN_DIR/ip-forward")"
}

step() {  # LIMIT_S STEP: one step in a process of its own, ended after LIMIT_S
  say "$2"
  timeout --kill-after=20 "$1" "$0" "$2"
}

if [ "${1:-}" = compose ]; then
  "$@"
  exit
elif [ $# -gt 0 ]; then
  for name in "$@"; do "$name"; done
  exit
fi
[ "$(id -u)" = 0 ] || { echo "compose-test needs root (apt, debootstrap, dockerd)" >&2; exit 1; }
trap 'status=$?; if [ $status != 0 ] && [ -f "$RUN_DIR/override.yml" ]; then
        compose ps -a; compose logs --tail 60; fi >&2 2>/dev/null; step 300 down || status=1; say "exit $status"
      exit $status' EXIT
rm -rf "$RUN_DIR"
step 300 engine
step 900 roots
step 180 daemon
step 300 bases
step 30 config
step 1200 build
step 360 up
step 900 scenario
