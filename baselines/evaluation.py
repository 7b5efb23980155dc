"""`llm-coop eval`: evaluate any policy on an env split and write a transcript and a leaderboard entry.

    llm-coop eval --env coop_coding-v0 --policy runs/c0 --seeds 0 1 2 3 4          # a trained run directory
    llm-coop eval --env coop_writing-v0 --policy 'runs/w/magrpo-seed{seed}' --seeds 0 1 2 3 4   # one run per seed
    llm-coop eval --env coop_writing-v0 --baseline sequential --model Qwen/Qwen3-1.7B
    llm-coop eval --env coop_writing-v0 --baseline single                          # embedded default model

What is evaluated (``--policy`` or ``--baseline``):

* ``--policy DIR``: a directory written by ``llm-coop train``: ``final/<agent>/`` holds a full model (full
  fine-tuning) or a PEFT adapter (LoRA; its base is read from ``adapter_config.json``). ``{seed}`` in DIR is
  replaced by each evaluated seed, so five training seeds are five runs. A run trained on ``single:<env>``
  (single-agent GRPO) is evaluated with the ``single`` protocol, every other run with ``parallel``.
* ``--baseline P --model M``: the untrained model M (HF name or local path; default: the embedded model) in
  protocol P of :mod:`baselines.untrained` (``single``, ``parallel``, ``sequential``, ``discussion``). All
  roles use the same weights (one loaded copy).

For each seed (sampling seed = the seed; for ``{seed}`` runs also the run's training seed) every task of the
split is answered ``--samples`` times. Generation is batched: one ``generate`` call per agent per round for
all tasks x samples of a seed (``--batch-tasks`` splits that), each call timed on its own. Scoring uses the
env's batch scorer (``env.score_many``, one sandbox batch on coding) when it has one.

Per record (one episode) the transcript stores every round's texts as a turn with the env's joint and
individual rewards and full breakdown (coding: test counts and outcomes), and ``timing``:
``response_time_s`` = the wall time from prompts to the final joint answer of the batch holding the episode
(agents of one round run in parallel, so a round costs its SLOWER agent's time; sequential rounds add up),
``tokens_per_s`` = new tokens of the batch (all agents) / the summed generation seconds of its calls, and
``new_tokens`` = the episode's own new tokens. Timings depend on the batch size and hardware (both recorded).

Metrics (``llm_coop_leaderboard.scoring.aggregate``): joint return and the paper's normalised components
from the final turn's breakdown, the unbiased pass@k of ``--pass-k`` (coding; k <= samples), timings.
The entry goes to ``leaderboards/entries/<entry_id>.json`` with the exact command in its provenance.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from baselines.lm.embedded import EMBEDDED_DIR
from baselines.lm.policies import Policies, SamplingConfig
from baselines.untrained import (
    PROTOCOLS,
    SINGLE_AGENT,
    SINGLE_PREFIX,
    discussion_prompt,
    sequential_prompt,
    single_prompt,
    split_single,
)
from llm_coop_envs import make
from llm_coop_envs.core import CoopParallelEnv, Score, Task
from llm_coop_leaderboard.entries import collect_provenance, dataset_fingerprint, make_entry, write_entry
from llm_coop_leaderboard.schema import leaderboard_root
from llm_coop_leaderboard.scoring import aggregate
from llm_coop_leaderboard.transcripts import Transcript, TranscriptRecord, TurnRecord, write_transcript

__all__ = ["EvalConfig", "EvalResult", "PolicySource", "evaluate", "load_source", "main", "run_protocol"]

_FAMILY = {"magrpo": "joint-reward", "independent": "independent-reward"}
_ALGO_NAME = {"magrpo": "MAGRPO", "independent": "Independent GRPO"}


@dataclass
class EvalConfig:
    """What to evaluate and how (every field is a flag of `llm-coop eval`)."""

    env: str
    policy: str | None = None
    baseline: str | None = None
    model: str | None = None
    split: str = "test"
    seeds: tuple[int, ...] = (0,)
    samples: int = 1
    max_new_tokens: int = 96
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    tasks: int = 0
    batch_tasks: int = 0
    pass_k: tuple[int, ...] = (1,)
    entry_id: str | None = None
    method_name: str | None = None
    root: Path | None = None
    device: str = "cpu"
    threads: int = 1
    progress: bool = True
    command: str = ""

    def validate(self) -> None:
        if (self.policy is None) == (self.baseline is None):
            raise ValueError("give exactly one of --policy (a trained run) and --baseline (an untrained protocol)")
        if self.baseline is not None and self.baseline not in PROTOCOLS:
            raise ValueError(f"--baseline must be one of {', '.join(PROTOCOLS)}, got {self.baseline!r}")
        if self.policy is not None and self.model is not None:
            raise ValueError("--model is for --baseline; a --policy run directory names its own models")
        for name in ("samples", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if not self.seeds:
            raise ValueError("--seeds needs at least one seed")


# ----- policies ------------------------------------------------------------------------------------------------
@dataclass
class PolicySource:
    """Loaded models for one seed: ``roles[agent]`` is the member of ``policies`` that answers as ``agent``."""

    policies: Policies
    roles: dict[str, str]
    protocol: str
    models: list[dict[str, Any]]
    run_config: dict[str, Any] = field(default_factory=dict)


def file_hash(path: Path) -> str | None:
    """SHA-256 of a weights file (or of the sorted weight files of a directory); None if there are none."""
    files = [path] if path.is_file() else sorted(p for p in path.glob("*") if p.suffix in (".safetensors", ".bin"))
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _display(path: str | Path) -> str:
    text = str(path)
    if Path(text).resolve() == EMBEDDED_DIR.resolve():
        return "embedded:baselines/lm/embedded_model"
    root = Path(__file__).resolve().parents[1]
    try:
        return Path(text).resolve().relative_to(root).as_posix()
    except ValueError:
        return text


def _load_run(run: Path, agents: list[str], device: str) -> PolicySource:
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
    final = run / "final"
    if (final / SINGLE_AGENT).is_dir():
        members, protocol = [SINGLE_AGENT], "single"
    else:
        members, protocol = agents, "parallel"
    missing = [m for m in members if not (final / m).is_dir()]
    if missing:
        raise FileNotFoundError(f"{final}: no final model for {missing} (expected final/<agent>/ from llm-coop train)")
    adapters = [(final / m / "adapter_config.json").exists() for m in members]
    models: list[dict[str, Any]] = []
    if any(adapters):
        if not all(adapters):
            raise ValueError(f"{final}: mixes LoRA adapters and full models")
        base = json.loads((final / members[0] / "adapter_config.json").read_text())["base_model_name_or_path"]
        lora = json.loads((final / members[0] / "adapter_config.json").read_text())
        policies = Policies(members, base, "lora", lora["r"], lora["lora_alpha"], lora["target_modules"], device=device)
        _load_adapters(policies, final, members)
        for m in members:
            models.append(
                {
                    "agent": m,
                    "model": _display(base),
                    "model_hash": None,
                    "adapter": _display(final / m),
                    "adapter_hash": file_hash(final / m),
                }
            )
    else:
        policies = Policies(members, [str(final / m) for m in members], "full", device=device)
        models = [{"agent": m, "model": _display(final / m), "model_hash": file_hash(final / m)} for m in members]
    return PolicySource(policies, {m: m for m in members}, protocol, models, config)


def _load_adapters(policies: Policies, final: Path, members: list[str]) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    for m in members:
        weights = load_file(str(final / m / "adapter_model.safetensors"))
        set_peft_model_state_dict(policies.members[m].module, weights, adapter_name=m)


def load_source(cfg: EvalConfig, agents: list[str], seed: int) -> PolicySource:
    """The policies evaluated for ``seed`` (a run directory, or an untrained model in a baseline protocol)."""
    if cfg.policy is not None:
        run = Path(cfg.policy.replace("{seed}", str(seed)))
        return _load_run(run, agents, cfg.device)
    name = cfg.model or str(EMBEDDED_DIR)
    policies = Policies(["model"], name, "full", device=cfg.device)
    path = Path(name)
    model_hash = file_hash(path) if path.exists() else None
    roles = {agent: "model" for agent in agents} | {SINGLE_AGENT: "model"}
    used = [SINGLE_AGENT] if cfg.baseline == "single" else agents
    models = [{"agent": a, "model": _display(name), "model_hash": model_hash} for a in used]
    return PolicySource(policies, roles, str(cfg.baseline), models)


# ----- protocols -----------------------------------------------------------------------------------------------
@dataclass
class Round:
    """The texts of one round for every episode of a batch, and its timing."""

    actions: list[dict[str, str]]
    seconds: float  # wall time of the round (parallel agents: the slower agent)
    generation_seconds: float  # summed time of every generate call
    new_tokens: list[int]  # per episode


Generate = Callable[[str, list[str]], tuple[list[str], list[int], float]]


def _generator(source: PolicySource, sampling: SamplingConfig, on_call: Callable[[], None]) -> Generate:
    def generate(role: str, prompts: list[str]) -> tuple[list[str], list[int], float]:
        member = source.roles[role]
        start = time.perf_counter()
        out = source.policies.generate({member: prompts}, sampling)[member]
        seconds = time.perf_counter() - start
        on_call()
        return out.texts, [int(n) for n in out.mask.sum(dim=1)], seconds

    return generate


def _parallel_round(generate: Generate, prompts: Mapping[str, list[str]]) -> Round:
    results = {agent: generate(agent, ps) for agent, ps in prompts.items()}
    rows = len(next(iter(prompts.values())))
    actions = [{agent: results[agent][0][i] for agent in prompts} for i in range(rows)]
    tokens = [sum(results[agent][1][i] for agent in prompts) for i in range(rows)]
    times = [r[2] for r in results.values()]
    return Round(actions, max(times), sum(times), tokens)


def run_protocol(
    protocol: str, env_id: str, env: CoopParallelEnv, prompts: Mapping[str, list[str]], generate: Generate
) -> list[Round]:
    """The rounds of ``protocol`` for a batch of episodes; ``prompts[agent][i]`` is episode i's env prompt."""
    agents = list(env.possible_agents)
    first, second = agents
    if protocol == "parallel":
        return [_parallel_round(generate, prompts)]
    if protocol == "single":
        rows = len(prompts[first])
        singles = [single_prompt(env_id, env, {a: prompts[a][i] for a in agents}) for i in range(rows)]
        texts, tokens, seconds = generate(SINGLE_AGENT, singles)
        actions = [split_single(env_id, agents, text) for text in texts]
        return [Round(actions, seconds, seconds, tokens)]
    if protocol == "sequential":
        one = _parallel_round(generate, {first: prompts[first]})
        follow = [sequential_prompt(env_id, p, a[first]) for p, a in zip(prompts[second], one.actions, strict=True)]
        two = _parallel_round(generate, {second: follow})
        actions = [{first: a[first], second: b[second]} for a, b in zip(one.actions, two.actions, strict=True)]
        tokens = [x + y for x, y in zip(one.new_tokens, two.new_tokens, strict=True)]
        seconds = one.seconds + two.seconds
        return [Round(actions, seconds, one.generation_seconds + two.generation_seconds, tokens)]
    if protocol == "discussion":
        one = _parallel_round(generate, prompts)
        revised = {
            agent: [discussion_prompt(p, a[agent], a[other]) for p, a in zip(prompts[agent], one.actions, strict=True)]
            for agent, other in ((first, second), (second, first))
        }
        return [one, _parallel_round(generate, revised)]
    raise ValueError(f"unknown protocol {protocol!r}; protocols: {', '.join(PROTOCOLS)}")


def _score_all(env: CoopParallelEnv, items: Sequence[tuple[Task, Mapping[str, str]]]) -> list[Score]:
    score_many = getattr(env, "score_many", None)
    if callable(score_many):
        return list(score_many(items))
    return [env.score(task, actions) for task, actions in items]


def _batch_records(
    env: CoopParallelEnv, episodes: list[tuple[Task, int]], seed: int, rounds: list[Round]
) -> list[TranscriptRecord]:
    items = [(task, r.actions[i]) for r in rounds for i, (task, _) in enumerate(episodes)]
    scores = _score_all(env, items)
    n = len(episodes)
    seconds = sum(r.seconds for r in rounds)
    generation = sum(r.generation_seconds for r in rounds)
    batch_tokens = sum(sum(r.new_tokens) for r in rounds)
    records = []
    for i, (task, sample) in enumerate(episodes):
        turns = tuple(
            TurnRecord(
                actions=dict(rounds[k].actions[i]),
                joint_reward=float(scores[k * n + i].joint),
                individual_rewards={a: float(v) for a, v in scores[k * n + i].individual.items()},
                breakdown=dict(scores[k * n + i].breakdown),
            )
            for k in range(len(rounds))
        )
        timing = {
            "response_time_s": seconds,
            "tokens_per_s": batch_tokens / generation if generation > 0 else 0.0,
            "new_tokens": float(sum(r.new_tokens[i] for r in rounds)),
        }
        records.append(TranscriptRecord(seed=seed, task_id=task.task_id, sample=sample, turns=turns, timing=timing))
    return records


def evaluate_seed(
    cfg: EvalConfig, env: CoopParallelEnv, source: PolicySource, tasks: Sequence[Task], seed: int, bar: Any
) -> list[TranscriptRecord]:
    """Every task x sample of one seed, in batches of ``cfg.batch_tasks`` tasks (0 = all)."""
    sampling = SamplingConfig(cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p)
    if source.protocol == "single":
        sampling = SamplingConfig(2 * cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p)
    generate = _generator(source, sampling, lambda: bar.update(1))
    torch.manual_seed(seed)
    size = cfg.batch_tasks or len(tasks)
    records: list[TranscriptRecord] = []
    for start in range(0, len(tasks), size):
        episodes = [(task, s) for task in tasks[start : start + size] for s in range(cfg.samples)]
        prompts: dict[str, list[str]] = {agent: [] for agent in env.possible_agents}
        for index, (task, _) in enumerate(episodes):
            obs, _ = env.reset(seed=seed * 100_003 + index, options={"task_id": task.task_id})
            for agent in env.possible_agents:
                prompts[agent].append(obs[agent]["prompt"])
        rounds = run_protocol(source.protocol, cfg.env, env, prompts, generate)
        records.extend(_batch_records(env, episodes, seed, rounds))
    return records


# ----- entry ---------------------------------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _method(cfg: EvalConfig, source: PolicySource) -> dict[str, Any]:
    if cfg.policy is None:
        name = cfg.method_name or f"{cfg.baseline} (untrained)"
        description = (
            f"Untrained {_display(cfg.model or EMBEDDED_DIR)} in the '{cfg.baseline}' protocol of "
            "baselines/untrained.py (MAGRPO_SPEC.md section 5)."
        )
        return {"name": name, "family": "untrained", "description": description, "config": {"protocol": cfg.baseline}}
    run = source.run_config
    algo = str(run.get("algo", "unknown"))
    single = str(run.get("env", "")).startswith(SINGLE_PREFIX)
    name = cfg.method_name or ("Single-agent GRPO" if single else _ALGO_NAME.get(algo, algo))
    steps = run.get("steps")
    config = {"protocol": source.protocol, "algo": algo, "train_steps": steps, "train_env": run.get("env")}
    # the full training config of the run (what `llm-coop train` wrote to config.json), seed and directory aside
    config["train_config"] = {k: v for k, v in sorted(run.items()) if k not in ("seed", "output_dir", "resume")}
    description = f"{name} trained by `llm-coop train` for {steps} steps per seed (run: {cfg.policy})."
    return {"name": name, "family": _FAMILY.get(algo, "joint-reward"), "description": description, "config": config}


def _templated(model: dict[str, Any], cfg: EvalConfig, seed: int) -> dict[str, Any]:
    """A model record of a per-seed run with the seed replaced by ``{seed}`` (hashes are per seed)."""
    run = _display(Path(str(cfg.policy).replace("{seed}", str(seed))))
    template = _display(Path(str(cfg.policy)))
    out = {k: (v.replace(run, template) if isinstance(v, str) else v) for k, v in model.items()}
    for key in ("model_hash", "adapter_hash"):
        if key in out:
            out[key] = None
    return out


def _train_seconds(cfg: EvalConfig, seeds: Sequence[int]) -> dict[str, float]:
    """Training wall time per seed (sum of `time/step_s` in metrics.jsonl; evaluations excluded)."""
    out = {}
    for seed in seeds:
        path = Path(str(cfg.policy).replace("{seed}", str(seed))) / "metrics.jsonl"
        if path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            out[str(seed)] = round(math.fsum(r.get("time/step_s", 0.0) for r in rows), 1)
    return out


def evaluate(cfg: EvalConfig) -> EvalResult:
    """Run the evaluation and write the transcript and (for a whole split) the leaderboard entry."""
    from tqdm import tqdm

    cfg.validate()
    torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    env = make(cfg.env)
    tasks = list(env.tasks.split_tasks(cfg.split))
    tasks = tasks[: cfg.tasks] if cfg.tasks else tasks
    agents = list(env.possible_agents)
    rounds = {"single": 1, "parallel": 2, "sequential": 2, "discussion": 4}
    batches = math.ceil(len(tasks) / (cfg.batch_tasks or len(tasks)))
    records: list[TranscriptRecord] = []
    source = None
    weights: dict[str, dict[str, str | None]] = {}  # seed -> agent -> weights hash (trained runs)
    bar = tqdm(desc=f"eval {cfg.env}", disable=not cfg.progress, dynamic_ncols=True)
    for seed in cfg.seeds:
        if source is None or cfg.policy is not None:
            source = load_source(cfg, agents, seed)
            bar.total = len(cfg.seeds) * batches * rounds[source.protocol]
            if cfg.policy is not None:
                weights[str(seed)] = {m["agent"]: m.get("model_hash") or m.get("adapter_hash") for m in source.models}
        records.extend(evaluate_seed(cfg, env, source, tasks, seed, bar))
    bar.close()
    assert source is not None
    root = (cfg.root or leaderboard_root()).resolve()
    method = _method(cfg, source)
    models = source.models
    if cfg.policy is not None:
        method["config"]["train_seconds_per_seed"] = _train_seconds(cfg, cfg.seeds)
        method["config"]["weights_sha256"] = weights
        if len(cfg.seeds) > 1:  # one model per seed: name the run template, hashes per seed in the config
            models = [_templated(m, cfg, cfg.seeds[-1]) for m in source.models]
    entry_id = cfg.entry_id or _entry_id(cfg, method["name"], source.run_config)
    transcript = Transcript(cfg.env, env.spec.spec_hash(), cfg.split, tuple(agents), tuple(records))
    partial = len(tasks) < len(env.tasks.split_tasks(cfg.split))
    folder = root / "transcripts" if not partial else root / "partial"
    transcript_path = folder / f"{entry_id}.jsonl.gz"
    write_transcript(transcript_path, transcript)
    if partial:  # a leaderboard entry covers the whole split
        return EvalResult(None, transcript_path, aggregate(records, pass_ks=cfg.pass_k).per_seed)
    sandbox = getattr(env, "sandbox", None)
    provenance = collect_provenance(cfg.command or "llm-coop eval", getattr(sandbox, "backend", None))
    provenance["wall_time_s"] = round(time.perf_counter() - started, 1)
    max_new = 2 * cfg.max_new_tokens if source.protocol == "single" else cfg.max_new_tokens
    entry = make_entry(
        entry_id=entry_id,
        env=env,
        transcript=transcript,
        transcript_path=transcript_path,
        leaderboard_dir=root,
        dataset=dataset_fingerprint(env, cfg.split, getattr(env, "dataset", "bundled"), _data_revision(env)),
        method=method,
        models=models,
        decoding={
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "top_k": cfg.top_k,
            "max_new_tokens": max_new,
            "samples_per_task": cfg.samples,
            "max_turns": 1,
            "chat_template": False,
        },
        provenance=provenance,
        pass_ks=cfg.pass_k,
    )
    path = root / "entries" / f"{entry_id}.json"
    write_entry(path, entry)
    return EvalResult(path, transcript_path, entry["metrics"]["per_seed"])


@dataclass(frozen=True)
class EvalResult:
    """The entry written (None when only part of the split was evaluated), the transcript, the metrics."""

    entry_path: Path | None
    transcript_path: Path
    per_seed: dict[str, dict[str, float]]


def _entry_id(cfg: EvalConfig, method_name: str, run_config: dict[str, Any]) -> str:
    """``method--model--env--split``; model = "embedded" for the embedded model and runs trained from it."""
    if cfg.policy is not None:
        base = run_config.get("model") or (run_config.get("agent_models") or [None])[0]
        what = str(base or EMBEDDED_DIR)
    else:
        what = cfg.model or str(EMBEDDED_DIR)
    shown = "embedded" if _display(what).startswith("embedded:") else _slug(Path(what).name)
    return f"{_slug(method_name)}--{shown[:40]}--{cfg.env.replace('/', '--')}--{cfg.split}"


def _data_revision(env: CoopParallelEnv) -> str | None:
    import llm_coop_envs

    if getattr(env, "dataset", "bundled") == "bundled":
        return f"llm-coop-envs bundled data (package {llm_coop_envs.__version__})"
    return None


# ----- command line --------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llm-coop eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--env", required=True, help="registered env id")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--policy", help="run directory of llm-coop train ('{seed}' is replaced by each seed)")
    what.add_argument("--baseline", choices=PROTOCOLS, help="untrained protocol (baselines/untrained.py)")
    p.add_argument("--model", help="HF model name or path for --baseline (default: the embedded model)")
    p.add_argument("--split", default="test")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--samples", type=int, default=1, help="samples per task (n of pass@k)")
    p.add_argument("--max-new-tokens", type=int, default=96, help="per agent (single: twice this)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--tasks", type=int, default=0, help="only the first N tasks of the split (0 = all)")
    p.add_argument("--batch-tasks", type=int, default=0, help="tasks per generate batch (0 = all)")
    p.add_argument("--pass-k", type=int, nargs="+", default=[1], help="k values of pass@k (k <= samples)")
    p.add_argument("--entry-id", help="leaderboard entry id (default: method--model--env--split)")
    p.add_argument("--method-name", help="method name shown on the leaderboard")
    p.add_argument("--root", type=Path, help="leaderboards directory (default: the repo's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    return p


def config_from_args(argv: Sequence[str], prog: str = "llm-coop eval") -> EvalConfig:
    """The config of a command line; ``prog`` + the arguments is recorded as the entry's command."""
    a = _parser().parse_args(list(argv))
    return EvalConfig(
        env=a.env, policy=a.policy, baseline=a.baseline, model=a.model, split=a.split, seeds=tuple(a.seeds),
        samples=a.samples, max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k,
        top_p=a.top_p, tasks=a.tasks, batch_tasks=a.batch_tasks, pass_k=tuple(a.pass_k), entry_id=a.entry_id,
        method_name=a.method_name, root=a.root, device=a.device, threads=a.threads, progress=not a.no_progress,
        command=f"{prog} " + shlex.join(list(argv)),
    )  # fmt: skip


def main(argv: Sequence[str] | None = None, prog: str = "python -m baselines.evaluation") -> int:
    """`llm-coop eval` (prog "llm-coop eval") or `python -m baselines.evaluation`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = config_from_args(argv, prog)
    try:
        cfg.validate()
    except ValueError as error:
        raise SystemExit(f"llm-coop eval: {error}") from None
    result = evaluate(cfg)
    for seed, metrics in result.per_seed.items():
        shown = "  ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items()))
        print(f"seed {seed}: {shown}")
    print(f"transcript: {result.transcript_path}")
    print(f"entry: {result.entry_path or '(none: only part of the split was evaluated)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
