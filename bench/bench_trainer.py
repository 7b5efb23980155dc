"""Time per MAGRPO step and peak memory: our trainer vs comlrl==1.4.3, same model, task and settings.

    python bench/bench_trainer.py                       # ours (LoRA, full) and comlrl, side by side
    python bench/bench_trainer.py --only ours           # without comlrl
    python bench/bench_trainer.py --model smollm2-135m-instruct --env coop_coding-v0 --max-new-tokens 128 --threads 1 2

Setting (both sides): the `--env` train prompts in dataset order (default coop_writing-v0; coop_coding-v0's
reward runs the model-written code in the env's sandbox), `--model` (default the embedded ~1M model; a
built-in name or any Hugging Face path, resolved once to a local directory that both sides load), the env's
agents (`env.possible_agents`), G = 4, `--max-new-tokens` (default 96), single turn, aligned joint actions,
mean baseline, no std normalisation, no KL, AdamW lr 2e-4, one update per prompt, on each `--threads`
count (torch.set_num_threads and OMP_NUM_THREADS in the worker) or the GPU.

Sampling (both sides the same): a built-in model's own defaults (`builtin_defaults`; SmolLM2: temperature
0.7, top-p 0.9, top-k 50), else temperature 1.0 with no top-k/top-p (comlrl gets top_k=0: its top_k=None
would leave transformers' default top-k 50 on). Prompt format: NO chat template on either side (comlrl's
formatter returns the env's plain prompt text, our policies run with chat_template=False), so both
tokenise the same text with the same tokenizer and see identical token sequences; the chat-template path
of our runner is measured elsewhere. The joint reward is the env's: comlrl gets it through a reward
function that steps a clone of the env.

Implementations: ours-lora (one frozen base + one adapter per agent), ours-full (a full copy per agent) and
comlrl-1.4.3 (a full copy per agent: comlrl 1.4.3 has no LoRA support; its source never mentions LoRA or
PEFT and `MAGRPOTrainer` builds one AdamW over each full model's parameters, so there is no comlrl-lora).

Each measurement runs in a fresh subprocess: `--steps` timed steps after `--warmup` untimed ones; the
implementations alternate over `--rounds` and the fastest round of each (implementation, threads) is shown.
Memory: model peak = peak resident set size minus the resident size just before the models are loaded,
after all imports (CPU), or `torch.cuda.max_memory_allocated` (GPU); process peak = the worker's whole peak
resident set size (VmHWM: interpreter, libraries, models, everything; the sandbox's own processes are not
included). Time split: generation (the sampling calls: our `Policies.generate`, comlrl's
`_generate_completions`), reward (env stepping: the env's `step` / `score_many`) and the rest of the step
(scoring the responses, backward, optimiser). comlrl runs in its own virtual environment (`--comlrl-venv`,
created with `--system-site-packages` + `pip install --no-deps comlrl==1.4.3` and its extra imports
`wandb openai` when missing), so that it sees the same torch and transformers.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COMLRL = "comlrl-1.4.3"
OURS = ("ours-lora", "ours-full")


@dataclass(frozen=True)
class Setting:
    """Everything one measurement depends on (passed to the worker subprocess as JSON)."""

    model: str
    model_dir: str
    env: str
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    steps: int
    warmup: int
    device: str
    threads: int
    G: int = 4
    lr: float = 2e-4


class Timer:
    """Seconds spent in the wrapped calls; a call made inside another call of the same timer counts once."""

    def __init__(self) -> None:
        self.total = 0.0
        self._depth = 0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total += time.perf_counter() - t0
                self._depth -= 1

        return timed

    def take(self) -> float:
        """The seconds so far, and start again from zero."""
        total, self.total = self.total, 0.0
        return total


def _status_mb(key: str) -> float:
    """A memory line of /proc/self/status (VmRSS: now, VmHWM: peak), in MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def sampling_of(model: str) -> dict[str, Any]:
    """The sampling of both sides: a built-in model's defaults, else temperature 1.0 and no filters."""
    from baselines.lm.builtin import builtin_defaults

    defaults = builtin_defaults([model])
    return {
        "temperature": float(defaults.get("temperature", 1.0)),
        "top_p": float(defaults.get("top_p", 1.0)),
        "top_k": int(defaults.get("top_k", 0)),
    }


def model_dir_of(model: str) -> str:
    """The local directory both sides load: a built-in model's or local path's, else the Hub snapshot's."""
    from baselines.lm.loading import resolve_model

    resolved = resolve_model(model)
    if Path(resolved).is_dir():
        return resolved
    from huggingface_hub import snapshot_download

    return snapshot_download(resolved)


def _import_heavy_modules(model_dir: str) -> None:
    """Import everything either side loads lazily, so that the memory baseline excludes code."""
    import importlib

    import peft  # noqa: F401
    import transformers.generation  # noqa: F401
    from transformers import AutoConfig

    kind = AutoConfig.from_pretrained(model_dir).model_type
    with contextlib.suppress(ModuleNotFoundError):
        importlib.import_module(f"transformers.models.{kind}.modeling_{kind}")


def _prompts(env_id: str, n: int) -> list[dict[str, str]]:
    """``n`` train tasks in dataset order (cycled when the split is shorter), with every agent's prompt."""
    from llm_coop_envs import make

    env = make(env_id)
    ids = env.task_ids("train")
    items = []
    for i in range(n):
        obs, _ = env.reset(seed=0, options={"task_id": ids[i % len(ids)]})
        items.append({"task_id": ids[i % len(ids)], **{f"prompt_{a}": obs[a]["prompt"] for a in env.possible_agents}})
    return items


def _time_env(env: Any, timer: Timer) -> None:
    """Time env stepping: the env class's `step` and `score_many` (clones share the class)."""
    cls = type(env)
    cls.step = timer.wrap(cls.step)
    if hasattr(cls, "score_many"):
        cls.score_many = timer.wrap(cls.score_many)


def _memory_start(device: str) -> float:
    """The resident size before the models load (and the GPU peak counter reset)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    return _status_mb("VmRSS")


def _memory_end(device: str, base_rss: float) -> dict[str, float]:
    import torch

    gpu = device.startswith("cuda")
    model = torch.cuda.max_memory_allocated() / 2**20 if gpu else _status_mb("VmHWM") - base_rss
    return {"model_peak_mb": model, "process_peak_mb": _status_mb("VmHWM")}


def _result(impl: str, s: Setting, seconds: float, tokens: float, gen_s: float, reward_s: float) -> dict[str, Any]:
    """One measurement's row (`seconds`, `gen_s` and `reward_s` summed over the timed steps)."""
    return {
        "impl": impl,
        "threads": s.threads,
        "model": s.model,
        "env": s.env,
        "max_new_tokens": s.max_new_tokens,
        "step_s": seconds / s.steps,
        "tokens_per_s": tokens / seconds,
        "gen_frac": gen_s / seconds,
        "update_frac": (seconds - gen_s - reward_s) / seconds,
        "reward_frac": reward_s / seconds,
    }


def run_ours(finetune: str, s: Setting) -> dict[str, Any]:
    import torch

    from baselines.algorithm import train_step
    from baselines.config import RunConfig
    from baselines.magrpo import MAGRPO, MAGRPOConfig
    from baselines.training import build_policies, make_optimizers
    from llm_coop_envs import make

    torch.set_num_threads(s.threads)
    items = _prompts(s.env, s.steps + s.warmup)
    algorithm = MAGRPO(MAGRPOConfig())
    cfg = RunConfig(
        env=s.env,
        model=s.model_dir,
        num_generations=s.G,
        max_new_tokens=s.max_new_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        lr=s.lr,
        finetune=finetune,  # type: ignore[arg-type]
        chat_template=False,
        threads=s.threads,
        device=s.device,
    )
    env = make(s.env)
    agents = list(env.possible_agents)
    gen, reward = Timer(), Timer()
    _time_env(env, reward)
    _import_heavy_modules(s.model_dir)
    base_rss = _memory_start(s.device)
    policies = build_policies(cfg, agents)
    policies.generate = gen.wrap(policies.generate)  # type: ignore[method-assign]
    opts = make_optimizers(policies, agents, cfg)
    seconds, tokens, gen_s, reward_s = 0.0, 0.0, 0.0, 0.0
    for i, item in enumerate(items):
        torch.manual_seed(i)
        obs, _ = env.reset(seed=0, options={"task_id": item["task_id"]})
        gen.take()
        reward.take()
        t0 = time.perf_counter()
        stats = train_step(algorithm, env, obs, policies, opts, cfg)
        if s.device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= s.warmup:
            seconds += time.perf_counter() - t0
            gen_s, reward_s = gen_s + gen.take(), reward_s + reward.take()
            tokens += sum(v for k, v in stats.items() if k.endswith("_tokens_mean")) * cfg.num_generations
    return {**_result(f"ours-{finetune}", s, seconds, tokens, gen_s, reward_s), **_memory_end(s.device, base_rss)}


def _sampled_tokens(out: dict[str, Any]) -> int:
    """Tokens comlrl sampled in one `_generate_completions` result, its EOS included (as ours counts)."""
    rows = zip(out["completion_input_ids"][0], out["response_lens"], strict=True)
    return sum(n + int(n < len(ids)) for ids, n in rows)


def run_comlrl(s: Setting) -> dict[str, Any]:
    import torch
    from comlrl.trainers import MAGRPOConfig, MAGRPOTrainer
    from transformers import AutoModelForCausalLM

    from baselines.lm.loading import load_tokenizer
    from llm_coop_envs import make

    torch.set_num_threads(s.threads)
    torch.manual_seed(0)
    env = make(s.env)
    agents = list(env.possible_agents)
    gen, reward_timer = Timer(), Timer()
    _time_env(env, reward_timer)

    def reward(*completions, batch_items=None):  # one completion per agent, one item
        scored = env.clone()
        scored.reset(seed=0, options={"task_id": batch_items[0]["task_id"]})
        _, rewards, _, _, _ = scored.step({a: c[0] for a, c in zip(agents, completions, strict=True)})
        return [float(rewards[agents[0]])]

    def formatter(agent):
        return lambda item: item[f"prompt_{agent}"]

    def make_trainer(items):
        args = MAGRPOConfig(
            num_train_epochs=1,
            agent_learning_rate=s.lr,
            num_agents=len(agents),
            num_generations=s.G,
            max_new_tokens=s.max_new_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,  # 0 = off (None would leave transformers' default top-k 50 on)
            num_turns=1,
            joint_mode="aligned",
            early_termination_threshold=None,
            advantage_normalization=False,
            advantage_mode="mean",
            eval_interval=0,
            rollout_buffer_size=1,
            logging_steps=10**6,
            agent_devices=s.device,
        )
        models = [AutoModelForCausalLM.from_pretrained(s.model_dir) for _ in agents]
        return MAGRPOTrainer(
            agents=models,
            num_agents=len(agents),
            tokenizer=load_tokenizer(s.model_dir),
            train_dataset=items,
            reward_func=reward,
            formatters=[formatter(a) for a in agents],
            args=args,
        )

    items = _prompts(s.env, s.steps + s.warmup)
    _import_heavy_modules(s.model_dir)
    base_rss = _memory_start(s.device)
    trainer = make_trainer(items[: s.warmup] or items)
    trainer.verbose = False
    tokens = [0]
    generate_completions = trainer._generate_completions

    def counted(*args, **kwargs):
        out = generate_completions(*args, **kwargs)
        tokens[0] += _sampled_tokens(out)
        return out

    trainer._generate_completions = gen.wrap(counted)
    if s.warmup:
        trainer.train()
    trainer.train_dataset = items[s.warmup :]
    tokens[0] = 0
    gen.take()
    reward_timer.take()
    t0 = time.perf_counter()
    trainer.train()
    if s.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    row = _result(COMLRL, s, seconds, tokens[0], gen.take(), reward_timer.take())
    return {**row, **_memory_end(s.device, base_rss)}


def _subprocess(python: str, impl: str, s: Setting) -> dict[str, Any]:
    cmd = [python, __file__, "--worker", impl, "--setting", json.dumps(dataclasses.asdict(s))]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": str(s.threads),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
    }
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{impl} ({s.threads} threads) failed:\n{out.stderr[-3000:]}")
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


def _worker(impl: str, setting: str) -> dict[str, Any]:
    s = Setting(**json.loads(setting))
    return run_comlrl(s) if impl == "comlrl" else run_ours(impl, s)


def best_rounds(results: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """The fastest round of each (implementation, threads)."""
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for r in results:
        key = (r["impl"], r["threads"])
        if key not in best or r["step_s"] < best[key]["step_s"]:
            best[key] = r
    return best


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


def print_table(best: dict[tuple[str, int], dict[str, Any]], threads: int) -> None:
    """One thread count: every implementation's numbers and ours / comlrl."""
    rows = {impl: r for (impl, n), r in best.items() if n == threads}
    ref = rows.get(COMLRL)
    head = f"{'implementation':<15}{'step s':>8}{'tok/s':>8}{'model MB':>10}{'proc MB':>9}"
    head += f"{'gen':>6}{'update':>8}{'reward':>8}"
    head += f"{'t/comlrl':>10}{'model/comlrl':>14}{'proc/comlrl':>13}" if ref else ""
    print(f"\n{threads} thread(s)\n{head}")
    for impl, r in rows.items():
        line = f"{impl:<15}{r['step_s']:>8.3f}{r['tokens_per_s']:>8.0f}{r['model_peak_mb']:>10.1f}"
        line += f"{r['process_peak_mb']:>9.1f}{r['gen_frac']:>6.0%}{r['update_frac']:>8.0%}{r['reward_frac']:>8.0%}"
        if ref:
            line += f"{_ratio(r['step_s'], ref['step_s']):>10}{_ratio(r['model_peak_mb'], ref['model_peak_mb']):>14}"
            line += f"{_ratio(r['process_peak_mb'], ref['process_peak_mb']):>13}"
        print(line)


def print_by_threads(best: dict[tuple[str, int], dict[str, Any]], threads: list[int]) -> None:
    """Step seconds of every implementation at every thread count, side by side."""
    impls = list(dict.fromkeys(impl for impl, _ in best))
    print(f"\nstep s by threads\n{'implementation':<15}" + "".join(f"{n:>8}" for n in threads))
    for impl in impls:
        cells = "".join(f"{best[(impl, n)]['step_s']:>8.3f}" if (impl, n) in best else f"{'-':>8}" for n in threads)
        print(f"{impl:<15}{cells}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded", help="built-in name (embedded, smollm2-135m-instruct) or HF path")
    p.add_argument("--env", default="coop_writing-v0")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--threads", type=int, nargs="+", default=[1], help="measure every implementation at each")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=2, help="alternate the implementations this many times")
    p.add_argument("--only", choices=["ours", "all"], default="all")
    p.add_argument("--comlrl-venv", type=Path, default=Path("/tmp/comlrl-venv"))
    p.add_argument("--out", type=Path, default=None, help="write every measurement and the best rounds as JSON")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--setting", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.setting)))
        return
    base = dict(model=args.model, model_dir=model_dir_of(args.model), env=args.env, max_new_tokens=args.max_new_tokens)
    base |= dict(**sampling_of(args.model), steps=args.steps, warmup=args.warmup, device=args.device)
    settings = [Setting(**base, threads=n) for n in args.threads]
    print(json.dumps({"setting": {k: v for k, v in base.items() if k != "model_dir"}, "threads": args.threads}))
    impls = [("lora", sys.executable), ("full", sys.executable)]
    if args.only == "all":
        impls.append(("comlrl", ensure_comlrl_venv(args.comlrl_venv)))
    results: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        for s in settings:
            for impl, python in impls:
                results.append(_subprocess(python, impl, s))
                print(json.dumps(results[-1]), flush=True)
    best = best_rounds(results)
    for n in args.threads:
        print_table(best, n)
    if len(args.threads) > 1:
        print_by_threads(best, args.threads)
    if args.out:
        report = {"setting": base, "threads": args.threads, "measurements": results, "best": list(best.values())}
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
