"""The training loop shared by every algorithm: seeding, task order, logging, evaluation, checkpoints.

Reproducibility: the randomness of step s (task choice and sampling) is seeded from (seed, s) alone, and
a checkpoint holds the trainable weights, optimiser states, RNG states, the step and the length of
metrics.jsonl at that step. A run killed at any moment and resumed with `--resume` therefore ends with the
same weights and the same metrics (apart from `time/*` keys) as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from baselines.lm.embedded import EMBEDDED_DIR
from baselines.lm.policies import Policies
from baselines.magrpo import MAGRPOConfig
from baselines.rollout import evaluate

EVAL_SEED = 12_345  # evaluation sampling seed, the same for every run so before/after are comparable


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + 17) % (2**31 - 1)


def task_for_step(task_ids: list[str], seed: int, step: int) -> str:
    """Epochs over the training tasks, each in its own seeded random order."""
    epoch, index = divmod(step, len(task_ids))
    order = np.random.default_rng([seed, epoch]).permutation(len(task_ids))
    return task_ids[int(order[index])]


def build_policies(cfg: MAGRPOConfig, agents: list[str]) -> Policies:
    models = list(cfg.agent_models) if cfg.agent_models else cfg.model
    embedded = models is None or models == str(EMBEDDED_DIR)
    finetune = ("full" if embedded else "lora") if cfg.finetune == "auto" else cfg.finetune
    torch.manual_seed(cfg.seed)  # LoRA initialisation
    return Policies(
        agents,
        models,
        finetune,
        cfg.lora_r,
        cfg.lora_alpha,
        chat_template=cfg.chat_template,
        need_reference=cfg.kl_coef > 0,
        dtype=torch.bfloat16 if cfg.bf16 else torch.float32,
        device=cfg.device,
    )


def run_eval(make_eval_env, policies: Policies, test_ids: list[str], cfg: MAGRPOConfig) -> dict[str, Any]:
    results = [
        evaluate(make_eval_env, policies, test_ids, cfg.sampling(), EVAL_SEED + k) for k in range(cfg.eval_seeds)
    ]
    return {
        "eval/joint_mean": sum(r["eval/joint_mean"] for r in results) / len(results),
        "eval/tasks": results[0]["eval/tasks"],
        "eval/example": results[0]["examples"],
    }


def save_checkpoint(
    path: Path, step: int, policies: Policies, optimizers: dict, metrics_bytes: int, eval_bytes: int
) -> None:
    """Write atomically: a temp file in the same directory, then os.replace."""
    state = {
        "step": step,
        "policies": {a: policies.state_dict(a) for a in optimizers},
        "optimizers": {a: opt.state_dict() for a, opt in optimizers.items()},
        "rng": {"torch": torch.random.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
        "metrics_bytes": metrics_bytes,
        "eval_bytes": eval_bytes,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, policies: Policies, optimizers: dict) -> dict:
    state = torch.load(path, weights_only=False)
    for agent, opt in optimizers.items():
        policies.load_state_dict(agent, state["policies"][agent])
        opt.load_state_dict(state["optimizers"][agent])
    torch.random.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    return state


def _truncate(path: Path, size: int) -> None:
    with open(path, "ab") as fh:
        fh.truncate(size)


def make_optimizers(policies: Policies, agents: list[str], cfg) -> dict[str, torch.optim.Optimizer]:
    """One AdamW per agent over its trainable tensors, as the fused multi-tensor kernel (one update kernel per
    step instead of several operations per tensor)."""
    return {
        a: torch.optim.AdamW(policies.parameters(a), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        for a in agents
    }


def train(cfg: MAGRPOConfig, algo: str, progress: bool = True, make_env=None) -> dict[str, Any]:
    """Train with `algo` ('magrpo' or 'independent'); returns the summary also written to summary.json.
    `make_env(id, reward_mode=..., max_turns=..., dataset=...)` defaults to `baselines.untrained.make_env`:
    `llm_coop_envs.make`, plus `single:<id>` (one agent writes both parts: single-agent GRPO)."""
    from tqdm import tqdm

    if make_env is None:
        from baselines.untrained import make_env  # llm_coop_envs.make, plus "single:<id>" (single-agent GRPO)
    make = make_env

    from baselines.algorithm import load_algorithm

    cfg.validate()
    module = load_algorithm(algo, cfg)  # built-in name, entry-point name or "module:Class"
    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    env_kwargs = dict(max_turns=cfg.max_turns, dataset=cfg.dataset)
    env = make(cfg.env, reward_mode=module.REWARD_MODE, **env_kwargs)

    def make_eval_env():
        return make(cfg.env, reward_mode="joint", **env_kwargs)

    agents = list(env.possible_agents)
    policies = build_policies(cfg, agents)
    optimizers = make_optimizers(policies, agents, cfg)
    train_ids, test_ids = env.task_ids("train"), env.task_ids("test")
    test_ids = test_ids[: cfg.eval_tasks] if cfg.eval_tasks else test_ids

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path, eval_path, ckpt_path = out / "metrics.jsonl", out / "eval.jsonl", out / "checkpoint.pt"
    start = 0
    if cfg.resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, policies, optimizers)
        start = state["step"]
        _truncate(metrics_path, state["metrics_bytes"])
        _truncate(eval_path, state["eval_bytes"])
    else:
        metrics_path.write_text("")
        first = {"step": 0, **run_eval(make_eval_env, policies, test_ids, cfg)}
        eval_path.write_text(json.dumps(first) + "\n")
    (out / "config.json").write_text(json.dumps({"algo": algo, **_jsonable(cfg)}, indent=2) + "\n")
    writer = _tensorboard(out) if cfg.tensorboard else None

    bar = tqdm(total=cfg.steps, initial=start, desc=algo, disable=not progress, dynamic_ncols=True)
    for step in range(start, cfg.steps):
        seed = step_seed(cfg.seed, step)
        torch.manual_seed(seed)
        obs, _ = env.reset(seed=seed, options={"task_id": task_for_step(train_ids, cfg.seed, step)})
        t0 = time.perf_counter()
        stats = module.train_step(env, obs, policies, optimizers, cfg)
        row = {"step": step + 1, **stats, "time/step_s": time.perf_counter() - t0}
        done = step + 1 == cfg.steps
        if done or (cfg.eval_every and (step + 1) % cfg.eval_every == 0):
            result = {"step": step + 1, **run_eval(make_eval_env, policies, test_ids, cfg)}
            row["eval/joint_mean"] = result["eval/joint_mean"]
            with open(eval_path, "a") as fh:
                fh.write(json.dumps(result) + "\n")
        with open(metrics_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if writer is not None:
            for key, value in row.items():
                if key != "step":
                    writer.add_scalar(key, value, step + 1)
        bar.update(1)
        bar.set_postfix(
            reward=f"{row['reward/joint_mean']:.2f}", eval=f"{row.get('eval/joint_mean', float('nan')):.2f}"
        )
        if done or (step + 1) % cfg.save_every == 0:
            save_checkpoint(
                ckpt_path, step + 1, policies, optimizers, metrics_path.stat().st_size, eval_path.stat().st_size
            )
    bar.close()
    if writer is not None:
        writer.close()
    for agent in agents:
        policies.save_final(agent, out / "final" / agent)
    evals = [json.loads(line) for line in eval_path.read_text().splitlines()]
    summary = {
        "algo": algo,
        "env": cfg.env,
        "seed": cfg.seed,
        "steps": cfg.steps,
        "eval_before": evals[0]["eval/joint_mean"],
        "eval_after": evals[-1]["eval/joint_mean"],
        "example_after": evals[-1]["eval/example"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_rewards(out, title=f"{algo} on {cfg.env} (seed {cfg.seed})")
    return summary


def plot_rewards(out: Path, title: str = "") -> Path:
    """reward_curve.png: training joint reward (mean of 25-step windows) and held-out evaluations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    reward = [r["reward/joint_mean"] for r in rows]
    window = 25
    smooth = [
        sum(reward[max(0, i - window + 1) : i + 1]) / len(reward[max(0, i - window + 1) : i + 1])
        for i in range(len(reward))
    ]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, smooth, label=f"train joint reward ({window}-step mean)")
    ax.plot([e["step"] for e in evals], [e["eval/joint_mean"] for e in evals], "o-", label="held-out joint reward")
    ax.set_xlabel("step")
    ax.set_ylabel("joint reward")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = out / "reward_curve.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _jsonable(cfg: MAGRPOConfig) -> dict[str, Any]:
    import dataclasses

    return {
        k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
        for k, v in dataclasses.asdict(cfg).items()
    }


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ImportError("--tensorboard needs the 'tensorboard' package: pip install tensorboard") from exc
    return SummaryWriter(str(out / "tensorboard"))
