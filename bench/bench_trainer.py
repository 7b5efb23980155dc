"""Time per MAGRPO step and peak memory: our trainer vs comlrl==1.4.3, same model, task and settings.

    python bench/bench_trainer.py                       # ours (LoRA, full) and comlrl, side by side
    python bench/bench_trainer.py --only ours           # without comlrl

Setting (both sides): coop_writing-v0 train prompts in dataset order, the embedded ~1M model, 2 agents,
G = 4, 96 new tokens, temperature 1.0 (no top-k/top-p), single turn, aligned joint actions, mean
baseline, no std normalisation, no KL, AdamW lr 2e-4, one update per prompt, one CPU thread (or the GPU).
The joint reward is the env's (comlrl gets it through a reward function that steps the env).

Each measurement runs in a fresh subprocess: `--steps` timed steps after `--warmup` untimed ones.
Memory: peak resident set size minus the resident size just before the models are loaded (CPU), or
`torch.cuda.max_memory_allocated` (GPU). comlrl runs in its own virtual environment
(`--comlrl-venv`, created with `--system-site-packages` + `pip install --no-deps comlrl==1.4.3` and its
extra imports `wandb openai` when missing), so that it sees the same torch and transformers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMON = dict(G=4, max_new_tokens=96, lr=2e-4)


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _import_heavy_modules() -> None:
    """Import everything either side loads lazily, so that the memory baseline excludes code."""
    import peft  # noqa: F401
    import transformers.generation  # noqa: F401
    from transformers.models.qwen2 import modeling_qwen2  # noqa: F401


def _prompts(n: int) -> list[dict]:
    from llm_coop_envs import make

    env = make("coop_writing-v0")
    items = []
    for tid in env.task_ids("train")[:n]:
        obs, _ = env.reset(seed=0, options={"task_id": tid})
        items.append({"task_id": tid, **{f"prompt_{a}": obs[a]["prompt"] for a in env.possible_agents}})
    return items


def run_ours(finetune: str, steps: int, warmup: int, device: str) -> dict:
    import torch

    from baselines.algorithm import train_step
    from baselines.config import RunConfig
    from baselines.magrpo import MAGRPO, MAGRPOConfig
    from baselines.training import build_policies, make_optimizers
    from llm_coop_envs import make

    torch.set_num_threads(1)
    items = _prompts(steps + warmup)
    algorithm = MAGRPO(MAGRPOConfig())
    cfg = RunConfig(
        num_generations=COMMON["G"],
        max_new_tokens=COMMON["max_new_tokens"],
        lr=COMMON["lr"],
        finetune=finetune,
        device=device,
    )
    env = make("coop_writing-v0")
    _import_heavy_modules()
    base_rss = _rss_mb()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    policies = build_policies(cfg, list(env.possible_agents))
    opts = make_optimizers(policies, list(env.possible_agents), cfg)
    times, tokens = [], 0
    for i, item in enumerate(items):
        torch.manual_seed(i)
        obs, _ = env.reset(seed=0, options={"task_id": item["task_id"]})
        t0 = time.perf_counter()
        stats = train_step(algorithm, env, obs, policies, opts, cfg)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            tokens += sum(v for k, v in stats.items() if k.endswith("_tokens_mean")) * cfg.num_generations
    mem = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else _peak_mb() - base_rss
    return {
        "impl": f"ours-{finetune}",
        "step_s": sum(times) / len(times),
        "mem_mb": mem,
        "tokens_per_s": tokens / sum(times),
    }


def run_comlrl(steps: int, warmup: int, device: str) -> dict:
    import torch
    from comlrl.trainers import MAGRPOConfig, MAGRPOTrainer
    from transformers import AutoModelForCausalLM

    from baselines.lm.embedded import EMBEDDED_DIR
    from baselines.lm.loading import load_tokenizer
    from llm_coop_envs import make

    torch.set_num_threads(1)
    torch.manual_seed(0)
    env = make("coop_writing-v0")
    agents = list(env.possible_agents)

    def reward(summary, elaboration, *, batch_items=None):  # one completion per agent, one item
        scored = env.clone()
        scored.reset(seed=0, options={"task_id": batch_items[0]["task_id"]})
        _, rewards, _, _, _ = scored.step({agents[0]: summary[0], agents[1]: elaboration[0]})
        return [float(rewards[agents[0]])]

    def formatter(agent):
        return lambda item: item[f"prompt_{agent}"]

    def make_trainer(items):
        args = MAGRPOConfig(
            num_train_epochs=1,
            agent_learning_rate=COMMON["lr"],
            num_generations=COMMON["G"],
            max_new_tokens=COMMON["max_new_tokens"],
            temperature=1.0,
            top_p=1.0,
            top_k=None,
            num_turns=1,
            joint_mode="aligned",
            early_termination_threshold=None,
            advantage_normalization=False,
            advantage_mode="mean",
            eval_interval=0,
            rollout_buffer_size=1,
            logging_steps=10**6,
            agent_devices=device,
        )
        models = [AutoModelForCausalLM.from_pretrained(str(EMBEDDED_DIR)) for _ in agents]
        tok = load_tokenizer(str(EMBEDDED_DIR))
        return MAGRPOTrainer(
            agents=models,
            num_agents=2,
            tokenizer=tok,
            train_dataset=items,
            reward_func=reward,
            formatters=[formatter(a) for a in agents],
            args=args,
        )

    items = _prompts(steps + warmup)
    _import_heavy_modules()
    base_rss = _rss_mb()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    trainer = make_trainer(items[:warmup])
    trainer.verbose = False
    trainer.train()  # warmup
    trainer.train_dataset = items[warmup:]
    t0 = time.perf_counter()
    trainer.train()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    mem = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else _peak_mb() - base_rss
    return {"impl": "comlrl-1.4.3", "step_s": elapsed / steps, "mem_mb": mem}


def _subprocess(python: str, impl: str, args) -> dict:
    cmd = [
        python,
        __file__,
        "--worker",
        impl,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--device",
        args.device,
    ]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
    }
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{impl} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ensure_comlrl_venv(venv: Path) -> str:
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    probe = subprocess.run([str(python), "-c", "import comlrl.trainers"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "comlrl==1.4.3"], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "wandb", "openai"], check=True)
    return str(python)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=2, help="alternate the implementations this many times")
    p.add_argument("--only", choices=["ours", "all"], default="all")
    p.add_argument("--comlrl-venv", type=Path, default=Path("/tmp/comlrl-venv"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        result = (
            run_comlrl(args.steps, args.warmup, args.device)
            if args.worker == "comlrl"
            else run_ours(args.worker, args.steps, args.warmup, args.device)
        )
        print(json.dumps(result))
        return
    impls = [("lora", sys.executable), ("full", sys.executable)]
    if args.only == "all":
        impls.append(("comlrl", ensure_comlrl_venv(args.comlrl_venv)))
    results: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for impl, python in impls:
            r = _subprocess(python, impl, args)
            results.setdefault(r["impl"], []).append(r)
            print(json.dumps(r), flush=True)
    best = {k: min(v, key=lambda r: r["step_s"]) for k, v in results.items()}
    print(f"\n{'implementation':<16}{'step s':>9}{'peak MB':>9}")
    for k, r in best.items():
        print(f"{k:<16}{r['step_s']:>9.3f}{r['mem_mb']:>9.1f}")
    if "comlrl-1.4.3" in best:
        ref = best["comlrl-1.4.3"]
        for k in ("ours-lora", "ours-full"):
            print(
                f"{k} / comlrl: time {best[k]['step_s'] / ref['step_s']:.2f}x, memory {best[k]['mem_mb'] / max(ref['mem_mb'], 1e-9):.2f}x"
            )


if __name__ == "__main__":
    main()
