#!/usr/bin/env bash
# Project tasks. Each installs what it needs first (idempotent), then runs.
#   bash run.sh demo    the main job: MAGRPO vs independent GRPO on the embedded model (see README)
#   bash run.sh test    the test suite (offline, CPU, one torch thread)
#   bash run.sh lint    ruff + mypy
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

install() {  # $1: the extras to install, e.g. "train" or "train,dev"
  # torch first, pinned, so nothing later resolves an unpinned (CUDA) build.
  "$PYTHON" -m pip install -q -c constraints.txt "torch==2.13.0"
  "$PYTHON" -m pip install -q -c constraints.txt -e ".[$1]"
}

offline() {
  export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 TRANSFORMERS_OFFLINE=1
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false
}

case "${1:-}" in
  demo)
    install train; offline
    exec "$PYTHON" -m baselines.demo "${@:2}"
    ;;
  test)
    install train,dev,humaneval,evaluate; offline
    exec "$PYTHON" -m pytest "${@:2}"
    ;;
  lint)
    install train,dev
    "$PYTHON" -m ruff check .
    "$PYTHON" -m ruff format --check .
    exec "$PYTHON" -m mypy
    ;;
  *)
    echo "usage: bash run.sh {demo|test|lint} [args...]" >&2
    exit 2
    ;;
esac
