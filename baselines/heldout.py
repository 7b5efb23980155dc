"""The held-out evaluation of a team of policies: the ONE code path behind a run's ``eval.jsonl`` and
``llm-coop eval --policy RUN``.

One sampled episode per (task, sample) of the held-out tasks, every episode of a seed batched per turn (one
``Policies.generate`` call per turn for all open episodes and all agents). The env factory is called once per
call; each episode plays a ``clone()`` of that env (an env without ``clone`` is built per episode), so what an
env loads once, such as a feedback model (``feedback="hf:<model>"``), is loaded once, not once per episode.
Seeding, per seed ``s``: the torch RNG is set to ``s`` before the first call (and restored afterwards),
episode ``i`` (tasks in order, samples of a task next to each other) is reset with ``seed=s + i``. A multi-turn episode continues with the
observations its env returned until the env ends it; its score is the joint reward of its last turn.

The training runner evaluates with :func:`heldout_eval` on the seeds :func:`eval_seeds` ``(eval_seeds)``
(``EVAL_SEED``, ``EVAL_SEED + 1``, ...) and the first ``eval_tasks`` tasks of the run's ``eval_split``;
``llm-coop eval --policy RUN --heldout`` calls the same function with the same arguments, so both give the
same ``eval/joint_mean``.

:func:`read_run` and :func:`load_run_policies` rebuild what a run directory of ``llm-coop train`` holds
from its ``config.json`` (never from defaults): the env id and the kwargs training passed to it
(:data:`RUN_ENV_FIELDS`), the splits (``train_split``, ``eval_split``), the decoding
(:data:`RUN_DECODING_FIELDS`), the prompt format (``chat_template``), and each agent's own model:
``final/<agent>/`` holds a full model, or a LoRA adapter on that agent's base (``agent_models[i]``, else
``model``, else the embedded model), loaded in the run's dtype (``bf16``). The only values not read from the
file are those of :data:`RUN_FIELD_DEFAULTS`, fields that runs recorded before they existed lack (such a run
used exactly those values).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from baselines.config import ENV_FIELDS, FEEDBACK_FIELDS, SWITCH_ENV_FIELDS, env_kwargs_of
from baselines.lm.embedded import EMBEDDED_DIR
from baselines.lm.policies import Policies, SamplingConfig
from baselines.rollout import env_prompt
from llm_coop_envs.wrappers import SINGLE_AGENT, SINGLE_PREFIX, base_env_id, make_env
from llm_coop_leaderboard.transcripts import TurnRecord

__all__ = [
    "EVAL_SEED",
    "HELDOUT_SPLIT",
    "RUN_DECODING_FIELDS",
    "RUN_ENV_FIELDS",
    "RUN_FIELD_DEFAULTS",
    "HeldoutEpisode",
    "HeldoutRun",
    "RunError",
    "RunPolicies",
    "RunRecord",
    "eval_seeds",
    "heldout_eval",
    "heldout_row",
    "load_run_policies",
    "play_heldout",
    "read_run",
]

EVAL_SEED = 12_345
"""Sampling seed of a run's first held-out evaluation; the k-th of ``eval_seeds`` is ``EVAL_SEED + k``. The
same for every run, so before/after and run/run comparisons see the same prompts and seeds."""
HELDOUT_SPLIT = "test"
"""The default held-out split (``RunConfig.eval_split``), and that of runs recorded before the field existed."""


def eval_seeds(count: int) -> list[int]:
    """The sampling seeds of a run's held-out evaluation with ``eval_seeds=count``."""
    if count < 1:
        raise ValueError(f"eval_seeds must be >= 1, got {count}")
    return [EVAL_SEED + k for k in range(count)]


@dataclass(frozen=True)
class HeldoutEpisode:
    """One episode: every turn's joint action with what the env returned, its new tokens, its env (ended)."""

    task_id: str
    sample: int
    turns: tuple[TurnRecord, ...]
    new_tokens: int
    env: Any

    @property
    def joint_return(self) -> float:
        """The joint reward of the last turn (the team's final answer)."""
        return self.turns[-1].joint_reward


@dataclass(frozen=True)
class HeldoutRun:
    """The episodes of one seed, their timing, and an example (the first open episode's answers, last turn)."""

    seed: int
    episodes: tuple[HeldoutEpisode, ...]
    seconds: float  # wall time from the first prompts to the last answers
    generation_seconds: float  # summed time of the generate calls
    new_tokens: int  # of every episode, all agents
    examples: dict[str, str]

    @property
    def joint_mean(self) -> float:
        finals = [episode.joint_return for episode in self.episodes]
        return sum(finals) / len(finals)


def _turn(actions: Mapping[str, str], infos: Mapping[str, Mapping[str, Any]]) -> TurnRecord:
    agents = list(actions)
    first = infos[agents[0]]
    for agent in agents:
        for key in ("joint_reward", "individual_reward", "breakdown"):
            if key not in infos[agent]:
                raise KeyError(f"infos[{agent!r}] has no {key!r}: the env breaks the llm_coop_envs info contract")
    return TurnRecord(
        actions=dict(actions),
        joint_reward=float(first["joint_reward"]),
        individual_rewards={a: float(infos[a]["individual_reward"]) for a in agents},
        breakdown=dict(first["breakdown"]),
    )


@torch.no_grad()
def play_heldout(
    env_factory: Callable[[], Any],
    policies: Policies,
    task_ids: Sequence[str],
    sampling: SamplingConfig,
    seed: int,
    samples: int = 1,
    on_turn: Callable[[], None] | None = None,
) -> HeldoutRun:
    """One sampled episode per (task, sample), all episodes batched per turn (see the module docstring)."""
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    keys = [(task_id, s) for task_id in task_ids for s in range(samples)]
    template = env_factory()  # ONE env built; each episode plays a clone, so what it loads (a feedback model) is shared
    clone = getattr(template, "clone", None)
    envs, obs = [], []
    for i, (task_id, _) in enumerate(keys):
        env = clone() if callable(clone) else env_factory()
        o, _ = env.reset(seed=seed + i, options={"task_id": task_id})
        envs.append(env)
        obs.append(o)
    turns: list[list[TurnRecord]] = [[] for _ in keys]
    tokens = [0] * len(keys)
    examples: dict[str, str] = {}
    active = list(range(len(envs)))
    start, generation = time.perf_counter(), 0.0
    while active:
        agents = list(envs[active[0]].agents)
        called = time.perf_counter()
        out = policies.generate({a: [env_prompt(envs[i], obs[i], a) for i in active] for a in agents}, sampling)
        generation += time.perf_counter() - called
        if on_turn is not None:
            on_turn()
        still = []
        for row, i in enumerate(active):
            actions = {a: out[a].texts[row] for a in agents}
            o, _, term, trunc, infos = envs[i].step(actions)
            turns[i].append(_turn(actions, infos))
            tokens[i] += sum(int(out[a].mask[row].sum()) for a in agents)
            if row == 0:
                examples = dict(actions)
            if not (all(term.values()) or all(trunc.values())):
                obs[i] = o
                still.append(i)
        active = still
    seconds = time.perf_counter() - start
    torch.random.set_rng_state(rng_state)
    episodes = tuple(
        HeldoutEpisode(task_id, s, tuple(turns[i]), tokens[i], envs[i]) for i, (task_id, s) in enumerate(keys)
    )
    return HeldoutRun(seed, episodes, seconds, generation, sum(tokens), examples)


def heldout_eval(
    env_factory: Callable[[], Any],
    policies: Policies,
    task_ids: Sequence[str],
    sampling: SamplingConfig,
    seeds: Sequence[int],
) -> dict[str, Any]:
    """A run's held-out evaluation row: ``eval/joint_mean`` (mean over ``seeds`` of the mean final joint
    reward over ``task_ids``), ``eval/tasks`` and ``eval/example`` (the first episode's last answers)."""
    return heldout_row([play_heldout(env_factory, policies, task_ids, sampling, seed) for seed in seeds])


def heldout_row(runs: Sequence[HeldoutRun]) -> dict[str, Any]:
    """The ``eval.jsonl`` row of the played seeds ``runs`` (see :func:`heldout_eval`)."""
    if not runs:
        raise ValueError("a held-out evaluation needs at least one seed")
    task_ids = {episode.task_id for episode in runs[0].episodes}
    return {
        "eval/joint_mean": sum(run.joint_mean for run in runs) / len(runs),
        "eval/tasks": len(task_ids),
        "eval/example": runs[0].examples,
    }


# ----- a run directory of `llm-coop train` -------------------------------------------------------------------
RUN_ENV_FIELDS = (*ENV_FIELDS, *FEEDBACK_FIELDS, *SWITCH_ENV_FIELDS)
"""The config.json fields training passes to the env as keyword arguments (:func:`env_kwargs_of`)."""
RUN_DECODING_FIELDS = ("max_new_tokens", "temperature", "top_k", "top_p")
"""The config.json fields of the sampling settings (:class:`SamplingConfig`)."""
RUN_FIELD_DEFAULTS: dict[str, Any] = {
    "train_split": "train",
    "eval_split": HELDOUT_SPLIT,
    "allow_train_on_eval_split": False,
    "lora_targets": [],
    "feedback": "level",
    "feedback_model": "default",
    "tasks_per_step": 1,
    "rollout_backend": "hf",
    "vllm_mode": "server",
    "vllm_url": None,
    "vllm_gpu_memory_utilization": 0.3,
    "tis_cap": None,
    "reward_workers": "local",
    "share_aux_hint": False,
    "answer_start": False,
}
"""config.json fields added after runs were first recorded, with the value every run without them used."""


class RunError(ValueError):
    """A run directory that cannot be evaluated as trained; the message names the file and the field."""


@dataclass(frozen=True)
class RunRecord:
    """A run directory and its ``config.json`` (what ``llm-coop train`` recorded)."""

    path: Path
    config: Mapping[str, Any]

    def field(self, name: str) -> Any:
        if name not in self.config:
            raise RunError(f"{self.path / 'config.json'}: field {name!r} is missing")
        return self.config[name]

    @property
    def env_id(self) -> str:
        """The env id the policies were trained on (``single:<id>`` for a single-agent run)."""
        return str(self.field("env"))

    @property
    def base_env(self) -> str:
        return base_env_id(self.env_id)

    @property
    def single(self) -> bool:
        return self.env_id.startswith(SINGLE_PREFIX)

    @property
    def env_kwargs(self) -> dict[str, Any]:
        return env_kwargs_of({name: self.field(name) for name in RUN_ENV_FIELDS})

    @property
    def dataset(self) -> str:
        """The dataset the policies were trained (and evaluated during training) on."""
        return str(self.field("dataset"))

    @property
    def train_split(self) -> str:
        return str(self.field("train_split"))

    @property
    def eval_split(self) -> str:
        """The split of the run's own held-out evaluations (``eval.jsonl``)."""
        return str(self.field("eval_split"))

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(**{name: self.field(name) for name in RUN_DECODING_FIELDS})

    @property
    def steps(self) -> int:
        return int(self.field("steps"))

    @property
    def seed(self) -> int:
        return int(self.field("seed"))

    def make_env_factory(self, env_kwargs: Mapping[str, Any] | None = None) -> Callable[[], Any]:
        """Builds the run's held-out env exactly as training does: its env id and :data:`RUN_ENV_FIELDS`
        (``env_kwargs`` instead, when given: another dataset, for a transfer evaluation)."""
        kwargs = dict(self.env_kwargs if env_kwargs is None else env_kwargs)
        return lambda: make_env(self.env_id, **kwargs)


def read_run(path: Path) -> RunRecord:
    """The run in ``path``, fields missing from an older ``config.json`` filled in from
    :data:`RUN_FIELD_DEFAULTS`; :class:`RunError` when it has no ``config.json`` (nothing to rebuild it from)."""
    config = path / "config.json"
    if not path.is_dir():
        raise RunError(f"{path}: no such run directory")
    if not config.is_file():
        raise RunError(
            f"{path}: no config.json, so its env, models, prompt format and decoding cannot be rebuilt; "
            "evaluate a run directory written by `llm-coop train`"
        )
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RunError(f"{config}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise RunError(f"{config}: expected a JSON object")
    return RunRecord(path, {**RUN_FIELD_DEFAULTS, **data})


@dataclass
class RunPolicies:
    """A run's loaded policies: ``members`` answer (the env's agents, or ``single``); ``models`` describes
    each member's weights for a leaderboard entry (``model``, ``adapter`` paths; hashes filled by the caller)."""

    policies: Policies
    members: list[str]
    models: list[dict[str, Any]]


def _member_bases(run: RunRecord, members: list[str]) -> list[str]:
    agent_models = list(run.field("agent_models") or [])
    if agent_models and len(agent_models) != len(members):
        raise RunError(
            f"{run.path / 'config.json'}: agent_models names {len(agent_models)} models for {len(members)} "
            f"agents {members}"
        )
    model = run.field("model")
    return [str(m) for m in agent_models] if agent_models else [str(model or EMBEDDED_DIR)] * len(members)


def _lora_settings(run: RunRecord, final: Path, members: list[str]) -> tuple[int, int, list[str]]:
    settings = set()
    for member in members:
        adapter = json.loads((final / member / "adapter_config.json").read_text(encoding="utf-8"))
        settings.add((int(adapter["r"]), int(adapter["lora_alpha"]), tuple(sorted(adapter["target_modules"]))))
    if len(settings) != 1:
        raise RunError(f"{final}: the agents' adapters differ in rank, alpha or target modules: {sorted(settings)}")
    r, alpha, target = settings.pop()
    return r, alpha, list(target)


def load_run_policies(run: RunRecord, agents: Sequence[str], device: str) -> RunPolicies:
    """Each agent's own final weights (full model or LoRA adapter on its own base), chat template and dtype
    as recorded by the run; ``agents`` are the env's agents (a single-agent run has one member)."""
    final = run.path / "final"
    members = [SINGLE_AGENT] if run.single else list(agents)
    missing = [m for m in members if not (final / m).is_dir()]
    if missing:
        raise RunError(f"{final}: no final model for {missing} (expected final/<agent>/ from llm-coop train)")
    adapters = [(final / m / "adapter_config.json").is_file() for m in members]
    if any(adapters) and not all(adapters):
        raise RunError(f"{final}: mixes LoRA adapters and full models")
    finetune = "lora" if all(adapters) else "full"
    if run.field("finetune") not in ("auto", finetune):
        raise RunError(f"{run.path / 'config.json'}: finetune is {run.field('finetune')!r} but final/ holds {finetune}")
    chat = bool(run.field("chat_template"))
    dtype = torch.bfloat16 if run.field("bf16") else torch.float32
    if finetune == "full":
        paths = [str(final / m) for m in members]
        policies = Policies(members, paths, "full", chat_template=chat, dtype=dtype, device=device)
        return RunPolicies(policies, members, [{"agent": m, "model": p} for m, p in zip(members, paths, strict=True)])
    bases = _member_bases(run, members)
    r, alpha, target = _lora_settings(run, final, members)
    policies = Policies(members, bases, "lora", r, alpha, target, chat_template=chat, dtype=dtype, device=device)
    _load_adapters(policies, final, members)
    models = [{"agent": m, "model": b, "adapter": str(final / m)} for m, b in zip(members, bases, strict=True)]
    return RunPolicies(policies, members, models)


def _load_adapters(policies: Policies, final: Path, members: list[str]) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    for member in members:
        weights = load_file(str(final / member / "adapter_model.safetensors"))
        set_peft_model_state_dict(policies.members[member].module, weights, adapter_name=member)
