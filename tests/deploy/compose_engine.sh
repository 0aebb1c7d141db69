#!/usr/bin/env bash
# `make compose-test`: the compose stack on a real Docker engine, on a machine with no
# container registry (deploy/README.md, "A machine with no registry").
#
#   bash tests/deploy/compose_engine.sh PYTHON
#
# 1. Installs docker.io, debootstrap and docker-compose with apt when one is missing.
# 2. Starts a Docker engine when none answers (and stops only that one, on any exit).
# 3. Builds the base images locally, cached by tag between runs: local/debian:bookworm
#    (debootstrap from the Debian mirror apt uses here) and the machine layer on top of
#    it (tests/deploy/local-base.Dockerfile: Python 3.11, this machine's CA bundle).
# 4. Builds deploy/cpu.Dockerfile and deploy/trainer.Dockerfile (CPU torch) with build
#    args only; this machine's wheel folder (pip's find-links) is served on 127.0.0.1
#    during the builds, so no machine file ends up in the images.
# 5. Runs tests/deploy/engine_stack.py (pytest): the stack under
#    `docker-compose -f docker-compose.yml -f deploy/compose.host.yml`, with assertions.
#
# Where no engine can be had (not root, no docker.io and no apt) it prints one line
# saying why and exits 0. Figures: $NAVIT_COMPOSE_OUT (runs/compose-test)/figures.json.
set -euo pipefail

PYTHON="${1:?usage: compose_engine.sh PYTHON}"
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${NAVIT_COMPOSE_OUT:-$REPO/runs/compose-test}"
DATA_ROOT="${NAVIT_DOCKER_ROOT:-/var/lib/navit-docker}"
PROJECT="${NAVIT_COMPOSE_PROJECT:-navit-compose-test}"
CPU_IMAGE="navit-pack-cpu:compose-test"
TRAINER_IMAGE="navit-pack-trainer:compose-test"
DEBIAN_IMAGE="local/debian:bookworm"
COMPOSE=(docker-compose -p "$PROJECT" -f "$REPO/docker-compose.yml" -f "$REPO/deploy/compose.host.yml")

skip() {
  echo "compose-test: SKIPPED: $*"
  exit 0
}
log() { echo "compose-test: $*"; }

# --- 1. tools --------------------------------------------------------------------------
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v docker-compose >/dev/null || missing+=(docker-compose)
if ((${#missing[@]})); then
  [ "$(id -u)" = 0 ] || skip "${missing[*]} missing and not root to install them"
  command -v apt-get >/dev/null || skip "${missing[*]} missing and no apt-get to install them"
  log "installing ${missing[*]} with apt"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends "${missing[@]}" >/dev/null; } ||
    skip "apt-get could not install ${missing[*]}"
fi

# --- 2. engine -------------------------------------------------------------------------
started_dockerd=""
wheel_server=""
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if docker info >/dev/null 2>&1; then
    # Whatever the test left: containers, volumes, networks of the test project.
    "${COMPOSE[@]}" --env-file "$OUT/compose.env" down -v --remove-orphans --timeout 5 \
      >/dev/null 2>&1 || true
  fi
  [ -z "$wheel_server" ] || kill "$wheel_server" 2>/dev/null || true
  if [ -n "$started_dockerd" ]; then
    log "stopping the Docker engine this run started (pid $started_dockerd)"
    kill -TERM "$started_dockerd" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$started_dockerd" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$started_dockerd" 2>/dev/null || true
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'echo "compose-test: FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

if ! docker info >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || skip "no Docker engine answers and not root to start one"
fi
mkdir -p "$OUT"
: >"$OUT/compose.env"
if docker info >/dev/null 2>&1; then
  log "using the Docker engine that runs here"
else
  mkdir -p "$DATA_ROOT"
  # No systemd and no bridge: every container uses the host's network (loopback only).
  dockerd --bridge=none --iptables=false --ip-masq=false --ip6tables=false \
    --storage-driver=overlay2 --data-root "$DATA_ROOT" >"$OUT/dockerd.log" 2>&1 &
  started_dockerd=$!
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && break
    kill -0 "$started_dockerd" 2>/dev/null || skip "dockerd exited: $(tail -n 1 "$OUT/dockerd.log")"
    sleep 1
  done
  docker info >/dev/null 2>&1 || skip "dockerd did not answer within 60 s: $(tail -n 1 "$OUT/dockerd.log")"
  log "started a Docker engine (pid $started_dockerd, data root $DATA_ROOT)"
fi

# --- 3. base images ----------------------------------------------------------------------
pip_setting() { # the value of one of this machine's pip settings, e.g. cert, find-links
  "$PYTHON" -m pip config list 2>/dev/null | sed -n "s/^[^.]*\.$1='\(.*\)'$/\1/p" | head -n 1
}
debian_mirror() { # the Debian mirror apt uses here
  { grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources || true
    grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list || true
  } | awk '{print $2}' | { grep -v security || true; } | head -n 1
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }
seconds_since() { awk -v ms="$(($(now_ms) - $1))" 'BEGIN { printf "%.1f", ms / 1000 }'; }
image_mb() { docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f", $1 / 1e6}'; }

: >"$OUT/build.jsonl"
record() { # record STEP START_MS [IMAGE]: one line of $OUT/build.jsonl
  local size="null"
  [ -z "${3:-}" ] || size="$(image_mb "$3")"
  printf '{"step": "%s", "seconds": %s, "size_mb": %s}\n' "$1" "$(seconds_since "$2")" "$size" \
    >>"$OUT/build.jsonl"
}
if ! docker image inspect "$DEBIAN_IMAGE" >/dev/null 2>&1; then
  start="$(now_ms)"
  mirror="$(debian_mirror)"
  mirror="${mirror:-http://deb.debian.org/debian}"
  log "debootstrap bookworm from $mirror"
  rootfs="$(mktemp -d /tmp/navit-rootfs.XXXXXX)"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$OUT/debootstrap.log" 2>&1 ||
    { tail -n 20 "$OUT/debootstrap.log"; rm -rf "$rootfs"; exit 1; }
  tar -C "$rootfs" -c . | docker import - "$DEBIAN_IMAGE" >/dev/null
  rm -rf "$rootfs"
  record "debootstrap and import $DEBIAN_IMAGE" "$start" "$DEBIAN_IMAGE"
fi

# The machine layer is tagged by what goes into it, so a changed CA bundle or Dockerfile
# builds a new one and an unchanged one is reused.
context="$(mktemp -d /tmp/navit-base.XXXXXX)"
cert="$(pip_setting cert)"
cp "${cert:-/etc/ssl/certs/ca-certificates.crt}" "$context/ca-bundle.crt"
base_hash="$(cat "$REPO/tests/deploy/local-base.Dockerfile" "$context/ca-bundle.crt" | sha256sum | cut -c1-12)"
BASE_IMAGE="local/navit-python:3.11-$base_hash"
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  log "building the machine layer $BASE_IMAGE"
  start="$(now_ms)"
  docker build --network host -q --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" \
    -f "$REPO/tests/deploy/local-base.Dockerfile" -t "$BASE_IMAGE" "$context" >/dev/null
  record "machine layer $BASE_IMAGE" "$start" "$BASE_IMAGE"
fi
rm -rf "$context"

# --- 4. the project's images -----------------------------------------------------------
build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
find_links="$(pip_setting find-links)"
if [ -n "$find_links" ] && [ -d "$find_links" ]; then
  # The torch wheel lies in this folder (the PyTorch index is not reachable here).
  # A fixed port where free: the URL is a build arg, and a changed one rebuilds the
  # torch layer instead of taking it from the layer cache.
  port="$("$PYTHON" -c '
import socket
s = socket.socket()
try:
    s.bind(("127.0.0.1", 28701))
except OSError:
    s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')"
  "$PYTHON" -m http.server --bind 127.0.0.1 --directory "$find_links" "$port" \
    >"$OUT/wheel-server.log" 2>&1 &
  wheel_server=$!
  build_args+=(--build-arg "PIP_FIND_LINKS=http://127.0.0.1:$port/"
    --build-arg "TORCH_INDEX_URL=https://pypi.org/simple")
fi

build() { # build IMAGE DOCKERFILE [ARGS]: records seconds and size in $OUT/build.json
  local image="$1" dockerfile="$2" start
  shift 2
  start="$(now_ms)"
  log "building $image ($dockerfile)"
  docker build --network host "${build_args[@]}" "$@" -f "$REPO/$dockerfile" -t "$image" \
    "$REPO" >"$OUT/build-${image%%:*}.log" 2>&1 ||
    { tail -n 30 "$OUT/build-${image%%:*}.log"; exit 1; }
  record "$dockerfile ($(grep -c 'Using cache' "$OUT/build-${image%%:*}.log" || true) steps cached)" \
    "$start" "$image"
}
build "$CPU_IMAGE" deploy/cpu.Dockerfile
build "$TRAINER_IMAGE" deploy/trainer.Dockerfile --build-arg TORCH_CUDA=cpu
[ -z "$wheel_server" ] || { kill "$wheel_server"; wheel_server=""; }
cat "$OUT/build.jsonl"

# --- 5. the stack ------------------------------------------------------------------------
# PYTHONPATH: this checkout's code, whichever checkout the venv's editable install names.
NAVIT_CPU_IMAGE="$CPU_IMAGE" NAVIT_TRAINER_IMAGE="$TRAINER_IMAGE" NAVIT_COMPOSE_OUT="$OUT" \
  NAVIT_COMPOSE_PROJECT="$PROJECT" PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" \
  "$PYTHON" -m pytest -p no:cacheprovider -q -x "$REPO/tests/deploy/engine_stack.py"
cat "$OUT/figures.json"
log "passed in ${SECONDS} s"
