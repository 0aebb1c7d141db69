#!/usr/bin/env bash
# The GPU side of navit-pack in one go (see bench/gpu_check.py for the five parts):
#
#   bench/gpu_check.sh OUT_DIR                     # on a host with a CUDA GPU
#   bench/gpu_check.sh OUT_DIR --device cpu --dry  # small sizes on a CPU, to exercise it
#
# Writes OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md. Exits 2 with one line when no
# CUDA device is present, 1 when a part failed (the others' figures are still written).
set -euo pipefail
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: bench/gpu_check.sh OUT_DIR [--device cuda] [--dry] [--parts a,b]" >&2
  exit 64
fi
out="$1"
shift
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"
cd "$root"
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "$python" bench/gpu_check.py --out "$out" "$@"
