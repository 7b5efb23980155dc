"""`llm-coop eval`: evaluate a trained run or an untrained protocol on an env split; write a transcript and a
leaderboard entry.

    llm-coop eval --policy runs/c0 --seeds 0 1 2 3 4                  # one run, five SAMPLING seeds
    llm-coop eval --policy 'runs/w/magrpo-seed{seed}' --seeds 0 1 2 3 4   # five runs: five TRAINING seeds
    llm-coop eval --policy runs/c0 --heldout       # the run's own final held-out evaluation, exactly
    llm-coop eval --policy runs/c0 --dataset human-eval          # transfer: the run on another dataset
    llm-coop eval --env coop_coding-v0 --baseline parallel --dataset human-eval
    llm-coop eval --env coop_writing-v0 --baseline sequential --model Qwen/Qwen3-1.7B
    llm-coop eval --env coop_writing-v0 --baseline single                    # embedded default model

What is evaluated (``--policy`` or ``--baseline``):

* ``--policy RUN``: a directory written by ``llm-coop train``. Everything is rebuilt from its
  ``config.json`` (:mod:`baselines.heldout`): the env id and every kwarg training passed to it
  (``max_turns``, ``dataset``), the held-out split (``eval_split``; ``test`` for runs recorded before it),
  each agent's own weights (``final/<agent>/``: a full model, or a LoRA adapter on that agent's own base
  from ``agent_models``/``model``), the chat template and the decoding (``max_new_tokens``,
  ``temperature``, ``top_k``, ``top_p``). A run without ``config.json`` is refused. Flags left out take the
  run's values; a flag that contradicts the run (``--env``, ``--max-new-tokens``, ``--temperature``,
  ``--top-k``, ``--top-p``) is an error that names both values. The data is a choice
  (:mod:`baselines.eval_plan`): ``--dataset`` other than the run's is a transfer evaluation (the entry's
  ``method.config.train_dataset`` and ``train_split`` say what it trained on), ``--split`` picks another
  split; the run's training split of its own dataset needs ``--allow-train-on-eval-split``, and the entry
  then records ``trained_on_eval_split: true`` (false in every other trained entry). A run trained on
  ``single:<env>`` (single-agent GRPO) answers the single-agent view of ``<env>``; the entry is filed under
  ``<env>``. The method's name, family and description come from the algorithm class
  (``baselines.algorithm.algorithm_card``).
* ``--baseline P --model M``: the untrained model M (HF name or local path; default: the embedded model) in
  protocol P of :mod:`baselines.untrained` (``single``, ``parallel``, ``sequential``, ``discussion``). All
  roles use the same weights (one loaded copy). Defaults: dataset ``bundled`` (``--dataset``: ``human-eval``,
  a .json/.jsonl file or a Hub id), split ``test``, 96 new tokens per agent (``single``: twice that),
  temperature 1, no top-k/top-p filter. ``--max-turns N`` (N > 1, ``parallel`` or ``single``; ``--feedback``:
  the env's feedback, default ``level``) plays the untrained team (or the single model, on the env's
  single-agent view) in the N-turn env the way a trained run is played (below): each agent answers its env
  observation, feedback included, every turn. This is the
  untrained row of a multi-turn board: the env kwargs enter the entry's env spec, so it is filed with the
  runs trained at those turns. Each agent carries a LoRA adapter that is never trained (PEFT initialises B
  to 0, so the output is the base model's); the one model is loaded once.

Seeds. ``{seed}`` in RUN is replaced by each seed: one run per seed, each trained with that seed (checked
against its config.json) and sampled with it: the entry's ``seed_kind`` is ``training``. Without ``{seed}``
one run is sampled under each seed of ``--seeds``: ``seed_kind`` ``sampling`` (untrained baselines too).

How a trained run is evaluated: :func:`baselines.heldout.play_heldout`, the function the training runner's
held-out evaluation (``eval.jsonl``) uses: per seed, one sampled episode per task x sample, all episodes
batched per turn, multi-turn episodes continued with the env's observations; ``--batch-tasks`` splits a
seed's tasks into batches (each batch then starts from the seed: other texts than one batch). ``--heldout``
takes the run's own evaluation settings (its dataset, seeds ``EVAL_SEED + k`` for ``k < eval_seeds``, the
first ``eval_tasks`` tasks of its ``eval_split``, one sample) and checks that ``eval/joint_mean`` equals the
run's final row of ``eval.jsonl`` (exit 1 when it does not). Baselines run their protocol's rounds with one
``generate`` call per agent per round for all tasks x samples of a seed.

Per record (one episode) the transcript stores every turn's texts with the env's joint and individual
rewards and full breakdown (coding: test counts and outcomes), and ``timing``: ``response_time_s`` = the
wall time from prompts to the final joint answers of the batch holding the episode (agents of one round run
in parallel, so a round costs its SLOWER agent's time; sequential rounds add up), ``tokens_per_s`` = new
tokens of the batch (all agents) / the summed seconds of its generate calls, and ``new_tokens`` = the
episode's own new tokens. Timings depend on the batch size and hardware (both recorded).

Metrics (``llm_coop_leaderboard.scoring.aggregate``): joint return and the paper's normalised components
from the final turn's breakdown, the unbiased pass@k of ``--pass-k`` (coding; k <= samples), timings.

Where it goes: ``--root`` (default: ``leaderboards/`` in the current directory; outside a checkout pass
``--root``). The entry is ``<root>/entries/<entry_id>.json`` and its transcript
``<root>/transcripts/<entry_id>.jsonl.gz`` (only part of a split, ``--tasks N``: a transcript under
``<root>/partial/`` and no entry); both paths are printed. The default id is
``method--model--env--split[--<steps>steps]--<hash>``, the hash (8 hex digits) covering the decoding, env
kwargs, seeds and their kind, samples and protocol, so different configurations never share an id. An
existing entry or transcript is never replaced without ``--overwrite``. Every finished batch is kept in
``<root>/partial/<entry_id>.batches.jsonl`` until the entry is written; ``--resume`` continues a killed
evaluation from them with the same texts and scores (:mod:`baselines.eval_resume`).
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

from baselines.eval_plan import RUN_ONLY_FIELDS, EvalConfig, EvalError, Plan, entry_env_kwargs, plan_evaluation
from baselines.eval_resume import FinishedBatches, batches_path
from baselines.heldout import (
    HeldoutRun,
    RunRecord,
    heldout_row,
    load_run_policies,
    play_heldout,
)
from baselines.lm.embedded import EMBEDDED_DIR
from baselines.lm.loading import resolve_model
from baselines.lm.policies import ChatPrompt, Policies, SamplingConfig
from baselines.untrained import PROTOCOLS, SINGLE_AGENT, Generate, Round, generate_calls, run_protocol
from llm_coop_envs import make
from llm_coop_envs.core import CoopParallelEnv, Score, Task
from llm_coop_envs.datasets import DatasetError
from llm_coop_envs.wrappers import SINGLE_PREFIX, SingleAgentEnv, make_env
from llm_coop_leaderboard.entries import (
    collect_provenance,
    dataset_fingerprint,
    entry_digest,
    make_entry,
    write_entry,
)
from llm_coop_leaderboard.schema import EntryError, leaderboard_root, method_families
from llm_coop_leaderboard.scoring import aggregate
from llm_coop_leaderboard.transcripts import Transcript, TranscriptRecord, TurnRecord, write_transcript

__all__ = [
    "EvalConfig",
    "EvalError",
    "EvalResult",
    "Plan",
    "PolicySource",
    "entry_env_kwargs",
    "entry_id_for",
    "evaluate",
    "evaluate_runs",
    "load_source",
    "main",
    "method_record",
    "plan_evaluation",
    "run_protocol",
]


def _root(cfg: EvalConfig) -> Path:
    if cfg.root is not None:
        if not cfg.root.is_dir():
            raise EvalError(f"--root {cfg.root}: no such directory")
        return cfg.root.resolve()
    try:
        return leaderboard_root().resolve()
    except EntryError as error:
        raise EvalError(f"--root: {error}") from None


@dataclass(frozen=True)
class OutputPaths:
    entry: Path | None  # None: only part of the split, no entry
    transcript: Path


def _output_paths(root: Path, entry_id: str, partial: bool, overwrite: bool) -> OutputPaths:
    """Where the entry and transcript go; refuses to replace either without ``overwrite``."""
    folder = "partial" if partial else "transcripts"
    paths = OutputPaths(
        None if partial else root / "entries" / f"{entry_id}.json", root / folder / f"{entry_id}.jsonl.gz"
    )
    for path in (paths.entry, paths.transcript):
        if path is not None and path.exists() and not overwrite:
            raise EvalError(
                f"{path} already exists (entry id {entry_id!r}); pass --overwrite to replace it, or --entry-id "
                "to file this evaluation under another id"
            )
    return paths


# ----- policies ------------------------------------------------------------------------------------------------
@dataclass
class PolicySource:
    """Loaded models of a baseline: ``roles[agent]`` is the member of ``policies`` that answers as ``agent``."""

    policies: Policies
    roles: dict[str, str]
    protocol: str
    models: list[dict[str, Any]]


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


def load_source(cfg: EvalConfig, plan: Plan, agents: list[str]) -> PolicySource:
    """The untrained model of a baseline (one loaded copy answers every role)."""
    name = cfg.model or str(EMBEDDED_DIR)
    policies = Policies(["model"], name, "full", chat_template=plan.chat_template, device=cfg.device)
    roles = {agent: "model" for agent in agents} | {SINGLE_AGENT: "model"}
    return PolicySource(policies, roles, plan.protocol, _baseline_models(cfg, plan, agents))


def _baseline_models(cfg: EvalConfig, plan: Plan, agents: list[str]) -> list[dict[str, Any]]:
    """The entry's model records of an untrained baseline: the model's name and hash for each answering role."""
    name = cfg.model or str(EMBEDDED_DIR)
    path = Path(resolve_model(name))  # a built-in name's files are hashed too
    model_hash = file_hash(path) if path.exists() else None
    used = [SINGLE_AGENT] if plan.protocol == "single" else agents
    return [{"agent": a, "model": _display(name), "model_hash": model_hash} for a in used]


def _run_models(models: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Entry model records of a loaded run: paths as displayed, SHA-256 of each full model or adapter."""
    out = []
    for model in models:
        if "adapter" in model:
            record = {"agent": model["agent"], "model": _display(model["model"]), "model_hash": None}
            record |= {"adapter": _display(model["adapter"]), "adapter_hash": file_hash(Path(model["adapter"]))}
        else:
            record = {"agent": model["agent"], "model": _display(model["model"])}
            record["model_hash"] = file_hash(Path(model["model"]))
        out.append(record)
    return out


# ----- protocols -----------------------------------------------------------------------------------------------
def _generator(
    env: CoopParallelEnv, source: PolicySource, sampling: SamplingConfig, on_call: Callable[[], None]
) -> Generate:
    """The protocols' generate call; a prompt is shown to a chat template as system = the role's instructions
    (the single model's for ``single``), user = the rest."""

    def generate(role: str, prompts: list[str]) -> tuple[list[str], list[int], float]:
        member = source.roles[role]
        system = env.role_instructions(role) if role in env.possible_agents else env.single_instructions
        chats = [ChatPrompt.from_text(p, system) for p in prompts]
        start = time.perf_counter()
        out = source.policies.generate({member: chats}, sampling)[member]
        seconds = time.perf_counter() - start
        on_call()
        return out.texts, [int(n) for n in out.mask.sum(dim=1)], seconds

    return generate


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


@dataclass
class Tracking:
    """The progress bar and the checkpoints of finished batches (:mod:`baselines.eval_resume`)."""

    bar: Any
    finished: FinishedBatches


def evaluate_seed(
    cfg: EvalConfig,
    plan: Plan,
    env: CoopParallelEnv,
    source: PolicySource,
    tasks: Sequence[Task],
    seed: int,
    track: Tracking,
) -> list[TranscriptRecord]:
    """A baseline on every task x sample of one seed, in batches of ``cfg.batch_tasks`` tasks (0 = all); the
    random state runs on from batch to batch, so a replayed batch restores the state after it."""
    generate = _generator(env, source, plan.sampling, lambda: track.bar.update(1))
    torch.manual_seed(seed)
    size = cfg.batch_tasks or len(tasks)
    records: list[TranscriptRecord] = []
    for batch, start in enumerate(range(0, len(tasks), size)):
        ids = [task.task_id for task in tasks[start : start + size]]
        replayed = track.finished.replay(seed, batch, ids)
        if replayed is not None:
            records.extend(replayed)
            continue
        episodes = [(task, s) for task in tasks[start : start + size] for s in range(cfg.samples)]
        prompts: dict[str, list[str]] = {agent: [] for agent in env.possible_agents}
        for index, (task, _) in enumerate(episodes):
            obs, _ = env.reset(seed=seed * 100_003 + index, options={"task_id": task.task_id})
            for agent in env.possible_agents:
                prompts[agent].append(obs[agent]["prompt"])
        rounds = run_protocol(source.protocol, env, prompts, generate)
        played = _batch_records(env, episodes, seed, rounds)
        track.finished.save(seed, batch, ids, played)
        records.extend(played)
    return records


# ----- trained runs --------------------------------------------------------------------------------------------
def _base_turns(env: SingleAgentEnv) -> tuple[TurnRecord, ...]:
    """The turns of a single-agent episode as the two-agent env scored them (split actions, every reward)."""
    return tuple(
        TurnRecord(
            actions=dict(turn.actions),
            joint_reward=float(turn.score.joint),
            individual_rewards={a: float(v) for a, v in turn.score.individual.items()},
            breakdown=dict(turn.score.breakdown),
        )
        for turn in env.inner.history
    )


def _heldout_records(run: HeldoutRun) -> list[TranscriptRecord]:
    tokens_per_s = run.new_tokens / run.generation_seconds if run.generation_seconds > 0 else 0.0
    records = []
    for episode in run.episodes:
        turns = _base_turns(episode.env) if isinstance(episode.env, SingleAgentEnv) else episode.turns
        timing = {"response_time_s": run.seconds, "tokens_per_s": tokens_per_s, "new_tokens": float(episode.new_tokens)}
        records.append(TranscriptRecord(run.seed, episode.task_id, episode.sample, turns, timing))
    return records


@dataclass
class RunsResult:
    """What evaluating the runs of a plan gave: transcript records, the played seeds, the loaded weights."""

    records: list[TranscriptRecord] = field(default_factory=list)
    played: list[HeldoutRun] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    weights: dict[str, dict[str, str | None]] = field(default_factory=dict)  # training seed -> agent -> sha256


def evaluate_runs(cfg: EvalConfig, plan: Plan, agents: list[str], task_ids: list[str], track: Tracking) -> RunsResult:
    """Each sampling seed's run played by :func:`baselines.heldout.play_heldout` (the training runner's
    held-out evaluation), in batches of ``cfg.batch_tasks`` tasks (0 = all)."""
    result = RunsResult()
    loaded_from, loaded = None, None
    for seed, run in plan.runs.items():
        if loaded is None or loaded_from != run.path:
            loaded, loaded_from = load_run_policies(run, agents, cfg.device), run.path
            result.models = _run_models(loaded.models)
            result.weights[str(run.seed)] = {
                m["agent"]: m.get("adapter_hash") or m["model_hash"] for m in result.models
            }
        _play_batches(result, run.make_env_factory(plan.env_kwargs), loaded.policies, cfg, plan, seed, task_ids, track)
    return result


def _play_batches(
    result: RunsResult,
    factory: Callable[[], Any],
    policies: Policies,
    cfg: EvalConfig,
    plan: Plan,
    seed: int,
    task_ids: list[str],
    track: Tracking,
) -> None:
    """One seed's episodes played by :func:`baselines.heldout.play_heldout` in batches of ``cfg.batch_tasks``
    tasks (0 = all), added to ``result``; a batch finished before an interruption is replayed from
    ``track.finished`` (each batch starts from the seed)."""
    size = cfg.batch_tasks or len(task_ids)
    for index, start in enumerate(range(0, len(task_ids), size)):
        batch = task_ids[start : start + size]
        replayed = track.finished.replay(seed, index, batch)
        if replayed is not None:
            result.records.extend(replayed)
            continue
        played = play_heldout(factory, policies, batch, plan.sampling, seed, cfg.samples, lambda: track.bar.update(1))
        result.played.append(played)
        records = _heldout_records(played)
        track.finished.save(seed, index, batch, records)
        result.records.extend(records)


def _bar_steps_per_batch(plan: Plan, env: CoopParallelEnv) -> int:
    """Progress updates per batch: a team's turns (at most the env's; a trained run or an untrained team in a
    multi-turn env), a protocol's generate calls."""
    if plan.run is not None or _plays_as_team(env):
        return env.max_turns
    return generate_calls(plan.protocol, len(env.possible_agents))


def _recorded_heldout(run: RunRecord) -> dict[str, Any]:
    """The run's final row of eval.jsonl (its evaluation after the last step)."""
    path = run.path / "eval.jsonl"
    if not path.is_file():
        raise EvalError(f"{path}: missing; --heldout compares with the run's own final evaluation")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows or rows[-1].get("step") != run.steps:
        raise EvalError(f"{path}: its last row is not the evaluation after step {run.steps} (the run did not finish)")
    return rows[-1]  # type: ignore[no-any-return]


def _train_seconds(plan: Plan) -> dict[str, float]:
    """Training wall time per training seed (sum of `time/step_s` in metrics.jsonl; evaluations excluded)."""
    out = {}
    for run in {run.path: run for run in plan.runs.values()}.values():
        path = run.path / "metrics.jsonl"
        if path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            out[str(run.seed)] = round(math.fsum(r.get("time/step_s", 0.0) for r in rows), 1)
    return out


# ----- entry ---------------------------------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def method_record(cfg: EvalConfig, plan: Plan) -> dict[str, Any]:
    """Name, family and description: a baseline's protocol, or the run's algorithm class (its card)."""
    run = plan.run
    if run is None:
        name = cfg.method_name or f"{cfg.baseline} (untrained)"
        description = (
            f"Untrained {_display(cfg.model or EMBEDDED_DIR)} in the '{cfg.baseline}' protocol of "
            "baselines/untrained.py."
        )
        turns = int(plan.env_kwargs.get("max_turns", 1))
        if turns > 1:
            feedback = plan.env_kwargs.get("feedback", "level")
            who = "The model" if cfg.baseline == "single" else "The team"
            description += f" {who} revises over {turns} turns with the env's {feedback!r} feedback."
        if plan.env_kwargs.get("share_aux_hint"):
            description += " Every prompt shows the task's agreed helper (the env's share_aux_hint)."
        if plan.env_kwargs.get("answer_start"):
            description += " Each agent continues its function's header (the env's answer_start)."
        return {"name": name, "family": "untrained", "description": description, "config": {"protocol": cfg.baseline}}
    from baselines.algorithm import algorithm_card, resolve_algorithm

    algo = str(run.field("algo"))
    try:
        card = algorithm_card(resolve_algorithm(algo))
    except ValueError as error:
        raise EvalError(f"{run.path / 'config.json'}: field 'algo': {error}") from None
    if card["family"] not in method_families():
        known = ", ".join(method_families())
        raise EvalError(f"algorithm {algo!r} declares family {card['family']!r}; leaderboard families: {known}")
    name = cfg.method_name or (card["single_agent_name"] if run.single else card["display_name"])
    config = {"protocol": plan.protocol, "algo": algo, "train_steps": run.steps, "train_env": run.env_id}
    config |= {"train_dataset": run.dataset, "train_split": run.train_split}  # the data it learned from
    # the full training config of the run (what `llm-coop train` wrote to config.json), seed and directory aside
    config["train_config"] = {k: v for k, v in sorted(run.config.items()) if k not in RUN_ONLY_FIELDS}
    description = f"{card['description']} Trained by `llm-coop train` for {run.steps} steps per run ({cfg.policy})."
    return {"name": name, "family": card["family"], "description": description, "config": config}


def _decoding(plan: Plan, env: CoopParallelEnv, samples: int) -> dict[str, Any]:
    return {
        "temperature": plan.sampling.temperature,
        "top_p": plan.sampling.top_p,
        "top_k": plan.sampling.top_k,
        "max_new_tokens": plan.sampling.max_new_tokens,
        "samples_per_task": samples,
        "max_turns": env.max_turns,
        "chat_template": plan.chat_template,
    }


def _model_names(cfg: EvalConfig, plan: Plan) -> list[str]:
    run = plan.run
    if run is None:
        return [cfg.model or str(EMBEDDED_DIR)]
    return [str(m) for m in run.field("agent_models") or [run.field("model") or EMBEDDED_DIR]]


def entry_id_for(cfg: EvalConfig, plan: Plan, method_name: str, env: CoopParallelEnv) -> str:
    """``method--model--env--split[--<steps>steps]--<hash>``; model = "embedded" for the embedded model and
    runs trained from it; the hash covers everything else that makes two evaluations differ."""
    shown = []
    for name in dict.fromkeys(_model_names(cfg, plan)):
        shown.append("embedded" if _display(name).startswith("embedded:") else _slug(Path(name).name)[:24])
    digest = entry_digest(
        decoding=_decoding(plan, env, cfg.samples),
        env_kwargs=env.spec.to_dict()["kwargs"],
        seeds=plan.seeds,
        seed_kind=plan.seed_kind,
        training_seeds=plan.training_seeds,
        protocol=plan.protocol,
    )
    steps = f"--{plan.run.steps}steps" if plan.run is not None else ""
    env_id = plan.env.replace("/", "--")
    return f"{_slug(method_name)[:32]}--{'_'.join(shown)}--{env_id}--{plan.split}{steps}--{digest}"


def _templated(model: dict[str, Any], cfg: EvalConfig, seed: int) -> dict[str, Any]:
    """A model record of a per-seed run with the seed replaced by ``{seed}`` (hashes are per seed)."""
    run = _display(Path(str(cfg.policy).replace("{seed}", str(seed))))
    template = _display(Path(str(cfg.policy)))
    out = {k: (v.replace(run, template) if isinstance(v, str) else v) for k, v in model.items()}
    for key in ("model_hash", "adapter_hash"):
        if key in out:
            out[key] = None
    return out


def _data_revision(env: CoopParallelEnv) -> str | None:
    import llm_coop_envs

    if getattr(env, "dataset", "bundled") == "bundled":
        return f"llm-coop-envs bundled data (package {llm_coop_envs.__version__})"
    return None


# ----- the evaluation ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalResult:
    """The entry written (None when only part of the split was evaluated), the transcript, the metrics, and
    for ``--heldout`` the reproduced ``eval.jsonl`` row and the run's own."""

    entry_path: Path | None
    transcript_path: Path
    per_seed: dict[str, dict[str, float]]
    heldout: dict[str, Any] | None = None
    recorded: dict[str, Any] | None = None

    @property
    def reproduced(self) -> bool | None:
        if self.heldout is None or self.recorded is None:
            return None
        return bool(self.heldout["eval/joint_mean"] == self.recorded["eval/joint_mean"])


def _env_and_split(plan: Plan) -> tuple[CoopParallelEnv, list[Task]]:
    """The entry's env (the policy env's kwargs at non-default values) and the tasks of the plan's split;
    :class:`EvalError` naming the dataset, or the split with the dataset's splits, when either is not there."""
    kwargs = entry_env_kwargs(plan.env, plan.env_kwargs)
    try:
        env = make(plan.env, **kwargs)
    except DatasetError as error:
        raise EvalError(f"--dataset {plan.env_kwargs.get('dataset', 'bundled')!r}: {error}") from None
    try:
        return env, list(env.tasks.split_tasks(plan.split))
    except ValueError as error:  # the message lists the dataset's splits
        raise EvalError(f"--split {plan.split!r}: {error}") from None


def _plays_as_team(env: CoopParallelEnv) -> bool:
    """Whether an untrained ``parallel`` team (or ``single`` model) is played like a trained run
    (:func:`_run_untrained_team`): in a multi-turn env, or one that gives answer starts (both reach a policy
    only through the env's prompts; answer starts are the team's only)."""
    return env.max_turns > 1 or bool(getattr(env, "answer_start", False))


def _run_baseline(cfg: EvalConfig, plan: Plan, env: CoopParallelEnv, tasks: list[Task], track: Tracking) -> RunsResult:
    if _plays_as_team(env):
        return _run_untrained_team(cfg, plan, env, tasks, track)
    source = load_source(cfg, plan, list(env.possible_agents))
    result = RunsResult(models=source.models)
    for seed in plan.seeds:
        result.records.extend(evaluate_seed(cfg, plan, env, source, tasks, seed, track))
    return result


def _run_untrained_team(
    cfg: EvalConfig, plan: Plan, env: CoopParallelEnv, tasks: list[Task], track: Tracking
) -> RunsResult:
    """The untrained model as a team in a multi-turn env (``--baseline parallel --max-turns N``) or one with
    answer starts (``--answer-start``), or as the single model in a multi-turn env (``--baseline single
    --max-turns N``: the single-agent view, :class:`~llm_coop_envs.wrappers.SingleAgentEnv`), played like a
    trained run (:func:`baselines.heldout.play_heldout`: each turn's prompts are the env's observations, its
    feedback included). Each member gets a LoRA adapter that is never trained; PEFT starts B at 0, so every
    member samples from the base model exactly, through the same decoding path as a trained LoRA run."""
    agents = list(env.possible_agents)
    single = plan.protocol == "single"
    members = [SINGLE_AGENT] if single else agents
    name = cfg.model or str(EMBEDDED_DIR)
    team = Policies(members, name, "lora", chat_template=plan.chat_template, device=cfg.device)
    result = RunsResult(models=_baseline_models(cfg, plan, agents))
    env_id = f"{SINGLE_PREFIX}{plan.env}" if single else plan.env
    factory = lambda: make_env(env_id, **plan.env_kwargs)  # noqa: E731
    for seed in plan.seeds:
        _play_batches(result, factory, team, cfg, plan, seed, [t.task_id for t in tasks], track)
    return result


def evaluate(cfg: EvalConfig) -> EvalResult:
    """Run the evaluation and write the transcript and (for a whole split) the leaderboard entry."""
    from tqdm import tqdm

    plan = plan_evaluation(cfg)
    root = _root(cfg)
    torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    env, every = _env_and_split(plan)
    # the commit and versions of the code this process imported now (a commit made while it runs is not its code)
    provenance = collect_provenance(
        cfg.command or "llm-coop eval", getattr(getattr(env, "sandbox", None), "backend", None)
    )
    tasks = every[: plan.tasks] if plan.tasks else every
    method = method_record(cfg, plan)
    entry_id = cfg.entry_id or entry_id_for(cfg, plan, method["name"], env)
    paths = _output_paths(root, entry_id, len(tasks) < len(every), cfg.overwrite)
    finished = (
        FinishedBatches.disabled() if cfg.heldout else FinishedBatches.open(batches_path(root, entry_id), cfg, entry_id)
    )
    batches = math.ceil(len(tasks) / (cfg.batch_tasks or len(tasks)))
    per_batch = _bar_steps_per_batch(plan, env)
    bar = tqdm(
        total=len(plan.seeds) * batches * per_batch, initial=finished.loaded * per_batch, disable=not cfg.progress
    )
    bar.set_description(f"eval {plan.env}")
    track = Tracking(bar, finished)
    if plan.run is None:
        result = _run_baseline(cfg, plan, env, tasks, track)
    else:
        result = evaluate_runs(cfg, plan, list(env.possible_agents), [t.task_id for t in tasks], track)
    bar.close()
    heldout = recorded = None
    if cfg.heldout and plan.run is not None:
        heldout, recorded = heldout_row(result.played), _recorded_heldout(plan.run)
    transcript = Transcript(
        plan.env, env.spec.spec_hash(), plan.split, tuple(env.possible_agents), tuple(result.records)
    )
    write_transcript(paths.transcript, transcript)
    if paths.entry is None:  # a leaderboard entry covers the whole split
        finished.remove()
        per_seed = aggregate(result.records, pass_ks=cfg.pass_k).per_seed
        return EvalResult(None, paths.transcript, per_seed, heldout, recorded)
    entry = _entry(cfg, plan, env, transcript, paths.transcript, root, method, entry_id, result, provenance)
    entry["provenance"]["wall_time_s"] = round(time.perf_counter() - started + finished.replayed_seconds, 1)
    if finished.loaded:
        entry["provenance"]["resumed_batches"] = finished.loaded
    write_entry(paths.entry, entry)
    finished.remove()
    return EvalResult(paths.entry, paths.transcript, entry["metrics"]["per_seed"], heldout, recorded)


def _entry(
    cfg: EvalConfig,
    plan: Plan,
    env: CoopParallelEnv,
    transcript: Transcript,
    transcript_path: Path,
    root: Path,
    method: dict[str, Any],
    entry_id: str,
    result: RunsResult,
    provenance: dict[str, Any],
) -> dict[str, Any]:
    models = result.models
    if plan.run is not None:
        method["config"]["train_seconds_per_seed"] = _train_seconds(plan)
        method["config"]["weights_sha256"] = result.weights
        if plan.seed_kind == "training" and len(plan.seeds) > 1:  # one model per seed: the template, no hashes
            models = [_templated(m, cfg, plan.seeds[-1]) for m in result.models]
    return make_entry(
        entry_id=entry_id,
        env=env,
        transcript=transcript,
        transcript_path=transcript_path,
        leaderboard_dir=root,
        dataset=dataset_fingerprint(env, plan.split, getattr(env, "dataset", "bundled"), _data_revision(env)),
        method=method,
        models=models,
        decoding=_decoding(plan, env, cfg.samples),
        provenance=provenance,
        pass_ks=cfg.pass_k,
        seed_kind=plan.seed_kind,
        training_seeds=plan.training_seeds if plan.run is not None else None,
        train_steps=plan.run.steps if plan.run is not None else None,
        trained_on_eval_split=plan.trained_on_eval_split,
    )


# ----- command line --------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llm-coop eval", description=__doc__.split("\n\n")[0])
    run = "(--policy: the run's value, and only it; --baseline: %s)"
    p.add_argument("--env", help="registered env id (required for --baseline; a --policy run names its own)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--policy", help="run directory of llm-coop train ('{seed}' is replaced by each seed)")
    what.add_argument("--baseline", choices=PROTOCOLS, help="untrained protocol (baselines/untrained.py)")
    p.add_argument("--model", help="HF model name or path for --baseline (default: the embedded model)")
    p.add_argument(
        "--dataset",
        help="bundled, human-eval (coding), a .json/.jsonl file or a Hub id (--policy: default the run's; another "
        "is a transfer evaluation, recorded in the entry; --baseline: bundled)",
    )
    p.add_argument(
        "--split",
        help="split of the dataset (--policy: default the run's eval_split; its train split needs "
        "--allow-train-on-eval-split; --baseline: test)",
    )
    p.add_argument(
        "--allow-train-on-eval-split",
        action="store_true",
        help="--policy: evaluate on the split the run trained on (the entry records trained_on_eval_split: true)",
    )
    p.add_argument("--seeds", type=int, nargs="+", help="sampling seeds; with '{seed}' also the runs (default: 0)")
    p.add_argument("--samples", type=int, default=1, help="samples per task (n of pass@k)")
    p.add_argument("--max-new-tokens", type=int, help=run % "96 per agent, single: twice this")
    p.add_argument("--temperature", type=float, help=run % "1.0")
    p.add_argument("--top-k", type=int, help=run % "0 = off")
    p.add_argument("--top-p", type=float, help=run % "1.0 = off")
    p.add_argument(
        "--chat-template",
        action=argparse.BooleanOptionalAction,
        help=run % "off; a built-in model's own default, e.g. on for smollm2-135m-instruct",
    )
    p.add_argument(
        "--max-turns",
        type=int,
        help=run
        % "1; N > 1 only with parallel or single: the team (or single model) answers the env's feedback for N turns",
    )
    p.add_argument(
        "--feedback",
        help=run % "the env's default, level; also plain, hf:<model>, openai:<url>; needs --max-turns >= 2",
    )
    p.add_argument(
        "--share-aux-hint",
        action=argparse.BooleanOptionalAction,
        help=run % "off; on: every prompt shows the task's agreed helper (coding env, bundled data)",
    )
    p.add_argument(
        "--answer-start",
        action=argparse.BooleanOptionalAction,
        help=run % "off; on only with parallel: each agent continues its function's header (coding env)",
    )
    p.add_argument("--tasks", type=int, help="only the first N tasks of the split (default: all; no entry)")
    p.add_argument("--batch-tasks", type=int, default=0, help="tasks per generate batch (0 = all)")
    p.add_argument("--pass-k", type=int, nargs="+", default=[1], help="k values of pass@k (k <= samples)")
    p.add_argument(
        "--heldout", action="store_true", help="--policy: repeat the run's own final held-out evaluation and check it"
    )
    p.add_argument("--entry-id", help="leaderboard entry id (default: method--model--env--split[--Nsteps]--hash)")
    p.add_argument("--method-name", help="method name shown on the leaderboard")
    p.add_argument("--root", type=Path, help="leaderboards directory (default: ./leaderboards)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing entry and transcript of this id (and, without --resume, an interrupted "
        "evaluation's finished batches)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted evaluation from its finished batches (<root>/partial/<id>.batches.jsonl)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    return p


def config_from_args(argv: Sequence[str], prog: str = "llm-coop eval") -> EvalConfig:
    """The config of a command line; ``prog`` + the arguments is recorded as the entry's command."""
    a = _parser().parse_args(list(argv))
    return EvalConfig(
        env=a.env, policy=a.policy, baseline=a.baseline, model=a.model, dataset=a.dataset, split=a.split,
        allow_train_on_eval_split=a.allow_train_on_eval_split,
        seeds=None if a.seeds is None else tuple(a.seeds), samples=a.samples, max_new_tokens=a.max_new_tokens,
        temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, chat_template=a.chat_template,
        max_turns=a.max_turns, feedback=a.feedback, share_aux_hint=a.share_aux_hint,
        answer_start=a.answer_start, tasks=a.tasks, batch_tasks=a.batch_tasks,
        pass_k=tuple(a.pass_k), heldout=a.heldout, entry_id=a.entry_id, method_name=a.method_name, root=a.root,
        overwrite=a.overwrite, resume=a.resume, device=a.device, threads=a.threads, progress=not a.no_progress,
        command=f"{prog} " + shlex.join(list(argv)),
    )  # fmt: skip


def main(argv: Sequence[str] | None = None, prog: str = "python -m baselines.evaluation") -> int:
    """`llm-coop eval` (prog "llm-coop eval") or `python -m baselines.evaluation`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = config_from_args(argv, prog)
    try:
        result = evaluate(cfg)
    except (EvalError, EntryError) as error:
        raise SystemExit(f"llm-coop eval: {error}") from None
    except KeyboardInterrupt:
        kept = "" if cfg.heldout else " The finished batches are kept: run the same command with --resume to go on."
        print(f"llm-coop eval: interrupted.{kept}", file=sys.stderr)
        return 130
    for seed, metrics in result.per_seed.items():
        shown = "  ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items()))
        print(f"seed {seed}: {shown}")
    print(f"transcript written to {result.transcript_path}")
    print(f"entry written to {result.entry_path}" if result.entry_path else "no entry: only part of the split")
    if result.heldout is not None and result.recorded is not None:
        mine, theirs = result.heldout["eval/joint_mean"], result.recorded["eval/joint_mean"]
        print(
            f"held-out eval/joint_mean {mine!r}; the run's eval.jsonl after step {result.recorded['step']}: {theirs!r}"
        )
        if not result.reproduced:
            print("llm-coop eval: the run's own held-out evaluation was NOT reproduced", file=sys.stderr)
            return 1
        print("reproduced: the same number as the run's own final held-out evaluation")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
