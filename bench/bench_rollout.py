"""Rollout backends side by side: sampling speed and the time of one MAGRPO step, in-process (`hf`) vs a vLLM
server (`vllm`).

    LLM_COOP_VLLM_PYTHON=$PWD/.venv-vllm/bin/python python bench/bench_rollout.py --out bench/results/rollout.json
    python bench/bench_rollout.py --backends hf                       # without vLLM
    python bench/bench_rollout.py --vllm-url http://127.0.0.1:8000    # a server that is already running

Setting (both backends): `--model` (default smollm2-135m-instruct) with its chat template, 2 agents (the
env's) with one LoRA adapter each on one shared base (r = 16, every projection), `--env` (default
coop_coding-v0) train tasks in the trainer's seeded order, G = `--num-generations` (4), `--max-new-tokens`
(128), the model's sampling defaults (SmolLM2: temperature 0.7, top-p 0.9, top-k 50), MAGRPO with the
runner's defaults, `--threads` torch threads in this process (1). Each backend gets fresh policies (same
LoRA initialisation) and the same tasks and seeds, then one untimed warm-up sampling call (8 tokens: vLLM
loads its adapters and kernels there), then `--steps` timed steps.

Per step: `step_s` = the whole MAGRPO step (rollout, env rewards, scoring, backward, AdamW) plus, for vllm,
the weight sync after it (the adapters written with PEFT and loaded under new names); `sample_s` = the
sampler's generate call(s) inside it; `tokens` = the generated tokens (through each response's end token);
`tok_s` = tokens / sample_s. The vLLM server is a separate process (started here from
`$LLM_COOP_VLLM_PYTHON`, or `--vllm-url`); its CPU worker binds its own OpenMP threads (reported as
`server_cores`, read from its log). On a machine shared with other work, compare the backends within one
run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from baselines.algorithm import load_algorithm, train_step
from baselines.config import RunConfig
from baselines.lm.builtin import builtin_defaults
from baselines.lm.completions import Completions, Prompt, SamplingConfig
from baselines.lm.vllm_rollout import VLLM_PYTHON_ENV, VLLMSampler, VLLMSettings
from baselines.rollout import Sampler, env_prompt
from baselines.training import build_modules, build_policies, make_optimizers, step_seed, task_for_step
from baselines.untrained import make_env


@dataclass
class TimedSampler:
    """A sampler that counts the seconds and generated tokens of the generate calls it forwards."""

    inner: Sampler
    seconds: float = 0.0
    tokens: int = 0
    calls: list[float] = field(default_factory=list)

    def generate(
        self, prompts: Mapping[str, Sequence[Prompt]], sampling: SamplingConfig, repeats: int = 1
    ) -> dict[str, Completions]:
        t0 = time.perf_counter()
        out = self.inner.generate(prompts, sampling, repeats)
        self.calls.append(time.perf_counter() - t0)
        self.seconds += self.calls[-1]
        self.tokens += sum(int(c.mask.sum()) for c in out.values())
        return out

    def take(self) -> tuple[float, int]:
        """Seconds and tokens so far, then start again from zero."""
        seconds, tokens = self.seconds, self.tokens
        self.seconds, self.tokens = 0.0, 0
        return seconds, tokens


def run_config(args: argparse.Namespace, backend: str) -> RunConfig:
    defaults = builtin_defaults([args.model])
    return RunConfig(
        env=args.env,
        model=args.model,
        finetune="lora",
        chat_template=True,
        num_generations=args.num_generations,
        max_new_tokens=args.max_new_tokens,
        temperature=float(defaults.get("temperature", 1.0)),
        top_p=float(defaults.get("top_p", 1.0)),
        top_k=int(defaults.get("top_k", 0)),
        lr=float(defaults.get("lr", 1e-4)),
        seed=args.seed,
        threads=args.threads,
        rollout_backend=backend,  # type: ignore[arg-type]
        vllm_url=args.vllm_url,
        vllm_mode=args.vllm_mode,
        device=args.device,
    )


def server_cores(sampler: VLLMSampler) -> str:
    """The cores the vLLM server's CPU worker bound its threads to (from its log), or '' if unknown."""
    log = getattr(sampler.slots[0].engine, "log", None)
    if log is None or not Path(log).exists():
        return ""
    found = re.findall(r"core ids=\[([^\]]*)\]", Path(log).read_text(errors="replace"))
    return found[-1] if found else ""


def measure(args: argparse.Namespace, backend: str) -> dict[str, Any]:
    """One backend: fresh policies, a warm-up sampling call, then ``args.steps`` timed MAGRPO steps."""
    torch.set_num_threads(args.threads)
    run = run_config(args, backend)
    algorithm = load_algorithm("magrpo")
    env = make_env(run.env)
    agents = list(env.possible_agents)
    policies = build_policies(run, agents)
    optimizers = make_optimizers(policies, agents, run)
    modules = build_modules(algorithm, policies, run)
    train_ids = list(env.task_ids(run.train_split))
    result: dict[str, Any] = {"backend": backend, "threads": args.threads, "steps": []}
    t0 = time.perf_counter()
    engine: VLLMSampler | None = None
    if backend == "vllm":
        python = args.vllm_python or os.environ.get(VLLM_PYTHON_ENV)
        engine = VLLMSampler(policies, VLLMSettings(url=args.vllm_url, python=python), seed=run.seed)
        result["engine_start_s"] = time.perf_counter() - t0
        result["server_cores"] = server_cores(engine)
    sampler = TimedSampler(engine if engine is not None else policies)
    try:
        obs, _ = env.reset(seed=0, options={"task_id": train_ids[0]})
        warm = SamplingConfig(8, run.temperature, run.top_k, run.top_p)
        sampler.generate({a: [env_prompt(env, obs, a)] for a in agents}, warm, run.num_generations)
        sampler.take()
        for step in range(args.steps):
            seed = step_seed(run.seed, step)
            task_id = task_for_step(train_ids, run.seed, step)
            obs, _ = env.reset(seed=seed, options={"task_id": task_id})
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            stats = train_step(algorithm, env, obs, policies, optimizers, run, modules, step, task_id, sampler=sampler)
            t_sync = time.perf_counter()
            if engine is not None:
                engine.sync()
            t_end = time.perf_counter()
            step_s, sync_s = t_end - t0, t_end - t_sync
            sample_s, tokens = sampler.take()
            row = {
                "step": step + 1,
                "task_id": task_id,
                "step_s": step_s,
                "sample_s": sample_s,
                "tokens": tokens,
                "tok_s": tokens / sample_s,
                "sync_s": sync_s,
                "rest_s": step_s - sample_s - sync_s,
                "joint_reward": stats["reward/joint_mean"],
            }
            for agent in agents:
                if f"rollout/logprob_gap_{agent}" in stats:
                    row[f"logprob_gap_{agent}"] = stats[f"rollout/logprob_gap_{agent}"]
            result["steps"].append(row)
    finally:
        if engine is not None:
            engine.close()
    return result


def table(results: list[dict[str, Any]]) -> str:
    """One line per (backend, step)."""
    head = f"{'backend':8} {'step':>4} {'step s':>8} {'sample s':>9} {'tokens':>7} {'tok/s':>7} {'sync s':>7} {'rest s':>7}"
    lines = [head, "-" * len(head)]
    for r in results:
        for s in r["steps"]:
            lines.append(
                f"{r['backend']:8} {s['step']:>4} {s['step_s']:8.1f} {s['sample_s']:9.1f} {s['tokens']:7d} "
                f"{s['tok_s']:7.1f} {s['sync_s']:7.2f} {s['rest_s']:7.1f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=["hf", "vllm"], choices=["hf", "vllm"])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--env", default="coop_coding-v0")
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vllm-python", default=None, help=f"default ${VLLM_PYTHON_ENV}")
    parser.add_argument("--vllm-url", default=None, help="a running server instead of starting one")
    parser.add_argument("--vllm-mode", default="server", choices=["server", "colocate"])
    parser.add_argument("--device", default="cpu", help="torch device of the trainer (and of a colocated engine)")
    parser.add_argument("--out", type=Path, default=None, help="write every measurement as JSON")
    args = parser.parse_args(argv)
    results = [measure(args, backend) for backend in args.backends]
    print(table(results))
    for r in results:
        if "engine_start_s" in r:
            print(f"vllm: engine start {r['engine_start_s']:.0f} s, server worker cores [{r['server_cores']}]")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        setting = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.out.write_text(json.dumps({"setting": setting, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
