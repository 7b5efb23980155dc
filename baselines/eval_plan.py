"""The settings of an evaluation, resolved: a trained run's from its ``config.json`` (flags may only repeat
them; a contradicting flag is an error that names it), an untrained baseline's from the flags or defaults.

What a run is evaluated ON is a choice, not part of the policy: ``--dataset`` defaults to the run's dataset
(another one is a transfer evaluation: the entry records the training data in ``method.config``) and
``--split`` to the run's ``eval_split`` (any split of the dataset, but the run's training split of its own
dataset only with ``--allow-train-on-eval-split``, and the entry then records ``trained_on_eval_split``).
``--heldout`` reproduces the run's own evaluation, so there both can only repeat the run's values.

:func:`plan_evaluation` turns an :class:`EvalConfig` (the flags of ``llm-coop eval``) into a :class:`Plan`
(env, kwargs, split, seeds, decoding, prompt format, protocol, seed kind, the runs), used by
:mod:`baselines.evaluation`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baselines.config import SWITCH_ENV_FIELDS
from baselines.heldout import HELDOUT_SPLIT, RunError, RunRecord, eval_seeds, read_run
from baselines.lm.builtin import builtin_defaults
from baselines.lm.completions import SamplingConfig
from baselines.untrained import PROTOCOLS
from llm_coop_envs import make
from llm_coop_envs.datasets import is_local_path

__all__ = [
    "BASELINE_DEFAULTS",
    "RUN_ONLY_FIELDS",
    "EvalConfig",
    "EvalError",
    "Plan",
    "entry_env_kwargs",
    "plan_evaluation",
]

BASELINE_DEFAULTS: dict[str, Any] = {
    "split": HELDOUT_SPLIT,
    "seeds": (0,),
    "max_new_tokens": 96,
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
}
"""What ``--baseline`` uses for a flag left out (``--policy`` takes the run's values instead); a built-in
model's own defaults (``llm-coop models``: sampling, chat template) replace these for that model."""
RUN_ONLY_FIELDS = ("seed", "output_dir", "resume", "overwrite")
"""config.json fields that differ between the runs of one ``{seed}`` template."""


class EvalError(ValueError):
    """An evaluation that cannot run as asked; the message names the flag, field or file."""


@dataclass
class EvalConfig:
    """What to evaluate and how (every field is a flag of `llm-coop eval`; None = not given)."""

    env: str | None = None
    policy: str | None = None
    baseline: str | None = None
    model: str | None = None
    dataset: str | None = None
    split: str | None = None
    allow_train_on_eval_split: bool = False
    seeds: tuple[int, ...] | None = None
    samples: int = 1
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    chat_template: bool | None = None
    max_turns: int | None = None
    feedback: str | None = None
    share_aux_hint: bool | None = None
    answer_start: bool | None = None
    tasks: int | None = None
    batch_tasks: int = 0
    pass_k: tuple[int, ...] = (1,)
    heldout: bool = False
    entry_id: str | None = None
    method_name: str | None = None
    root: Path | None = None
    overwrite: bool = False
    resume: bool = False
    device: str = "cpu"
    threads: int = 1
    progress: bool = True
    command: str = ""

    def validate(self) -> None:
        """Raise :class:`EvalError` naming the first bad flag (checks that need no run directory)."""
        if (self.policy is None) == (self.baseline is None):
            raise EvalError("give exactly one of --policy (a trained run) and --baseline (an untrained protocol)")
        if self.baseline is not None:
            if self.baseline not in PROTOCOLS:
                raise EvalError(f"--baseline must be one of {', '.join(PROTOCOLS)}, got {self.baseline!r}")
            if self.env is None:
                raise EvalError("--baseline needs --env (a --policy run names its own env)")
            if self.heldout:
                raise EvalError("--heldout reproduces a trained run's evaluation; it needs --policy")
            if self.allow_train_on_eval_split:
                raise EvalError(
                    "--allow-train-on-eval-split is for --policy: an untrained baseline has no training split"
                )
            self._validate_turns()
        if self.policy is not None and self.model is not None:
            raise EvalError("--model is for --baseline; a --policy run directory names its own models")
        for flag, value in (("--dataset", self.dataset), ("--split", self.split)):
            if value is not None and not value.strip():
                raise EvalError(f"{flag} must not be empty")
        if self.samples < 1:
            raise EvalError("--samples must be >= 1")
        too_large = [k for k in self.pass_k if not 1 <= k <= self.samples]
        if too_large:
            raise EvalError(
                f"--pass-k {too_large[0]} needs --samples >= {too_large[0]} (pass@k is estimated from n >= k samples "
                f"per task; got --samples {self.samples})"
            )
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise EvalError("--max-new-tokens must be >= 1")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) < len(self.seeds)):
            raise EvalError(f"--seeds needs at least one seed, each once; got {list(self.seeds)}")
        if self.heldout:
            self._validate_heldout()

    def _validate_turns(self) -> None:
        """A baseline's multi-turn flags: only ``parallel`` and ``single`` play the env's turns (the other
        protocols have their own rounds), feedback needs a second turn to be shown in, and answer starts are
        the team env's."""
        turns = 1 if self.max_turns is None else self.max_turns
        if turns < 1:
            raise EvalError(f"--max-turns must be >= 1, got {turns}")
        if turns > 1 and self.baseline not in ("parallel", "single"):
            raise EvalError(
                f"--max-turns {turns} is for --baseline parallel or single (the team or the single model answers "
                f"the env's feedback each turn); {self.baseline!r} has its own rounds (baselines/untrained.py)"
            )
        if self.feedback is not None and turns < 2:
            raise EvalError("--feedback is shown from the second turn on: it needs --max-turns >= 2")
        if self.answer_start and self.baseline != "parallel":
            raise EvalError(
                f"--answer-start is for --baseline parallel (each agent continues its own function's header); "
                f"{self.baseline!r} prompts its roles itself (baselines/untrained.py)"
            )

    def _validate_heldout(self) -> None:
        assert self.policy is not None
        if "{seed}" in self.policy:
            raise EvalError("--heldout reproduces one run: give its directory, without '{seed}'")
        for flag, given in (("--seeds", self.seeds is not None), ("--samples", self.samples != 1)):
            if given:
                raise EvalError(f"--heldout uses the run's own evaluation seeds and one sample: leave out {flag}")
        if self.batch_tasks:
            raise EvalError("--heldout batches every task as training did: leave out --batch-tasks")
        if self.resume:
            raise EvalError("--heldout keeps no progress to resume (a few tasks, checked against the run's numbers)")


@dataclass(frozen=True)
class Plan:
    """An evaluation with every setting resolved (from the run's config.json, the flags, or the defaults)."""

    env: str  # the entry's env id (the base env of a single-agent run)
    env_kwargs: dict[str, Any]  # kwargs of the policy env as training passed them (baselines: none)
    split: str
    seeds: tuple[int, ...]
    tasks: int  # first N tasks of the split, 0 = all
    sampling: SamplingConfig  # per member (a single-agent baseline gets twice max_new_tokens)
    chat_template: bool
    protocol: str
    seed_kind: str  # "training" (one run per seed) or "sampling" (one model, several sampling seeds)
    runs: dict[int, RunRecord] = field(default_factory=dict)  # sampling seed -> run (--policy only)
    trained_on_eval_split: bool | None = None  # the split is the run's training split of its dataset (None: untrained)

    @property
    def run(self) -> RunRecord | None:
        return next(iter(self.runs.values()), None)

    @property
    def training_seeds(self) -> list[int]:
        return sorted({run.seed for run in self.runs.values()})


# ----- resolving the settings ----------------------------------------------------------------------------------
def plan_evaluation(cfg: EvalConfig) -> Plan:
    """Every setting of the evaluation: a run's come from its config.json (flags may only repeat them), a
    baseline's from the flags or :data:`BASELINE_DEFAULTS`. Raises :class:`EvalError` naming the flag."""
    cfg.validate()
    if cfg.baseline is not None:
        return _baseline_plan(cfg)
    try:
        return _policy_plan(cfg)
    except RunError as error:
        raise EvalError(str(error)) from None


def _baseline_plan(cfg: EvalConfig) -> Plan:
    defaults = {**BASELINE_DEFAULTS, "chat_template": False, **builtin_defaults([cfg.model])}  # the model's own

    def pick(name: str) -> Any:
        value = getattr(cfg, name)
        return defaults[name] if value is None else value

    budget = pick("max_new_tokens") * (2 if cfg.baseline == "single" else 1)  # single: both parts in one answer
    sampling = SamplingConfig(budget, pick("temperature"), pick("top_k"), pick("top_p"))
    assert cfg.env is not None and cfg.baseline is not None  # validate()
    given = {"dataset": cfg.dataset, "max_turns": cfg.max_turns, "feedback": cfg.feedback}
    for switch in SWITCH_ENV_FIELDS:  # off is the env's default
        given[switch] = True if getattr(cfg, switch) else None
    return Plan(
        env=cfg.env,
        env_kwargs={name: value for name, value in given.items() if value is not None},
        split=pick("split"),
        seeds=tuple(pick("seeds")),
        tasks=cfg.tasks or 0,
        sampling=sampling,
        chat_template=bool(pick("chat_template")),
        protocol=cfg.baseline,
        seed_kind="sampling",
    )


def _policy_runs(cfg: EvalConfig) -> tuple[dict[int, RunRecord], str]:
    """Sampling seed -> run, and the seed kind (``training``: one run per seed via ``{seed}``)."""
    assert cfg.policy is not None
    if cfg.heldout:
        run = read_run(Path(cfg.policy))
        return {seed: run for seed in eval_seeds(int(run.field("eval_seeds")))}, "sampling"
    seeds = cfg.seeds or BASELINE_DEFAULTS["seeds"]
    if "{seed}" not in cfg.policy:
        run = read_run(Path(cfg.policy))
        return {seed: run for seed in seeds}, "sampling"
    runs = {seed: read_run(Path(cfg.policy.replace("{seed}", str(seed)))) for seed in seeds}
    first = next(iter(runs.values()))
    for seed, run in runs.items():
        if run.seed != seed:
            raise EvalError(
                f"{run.path}: trained with seed {run.seed}, but '{{seed}}' in --policy names it seed {seed}"
            )
        for key in sorted(set(first.config) | set(run.config)):
            if key not in RUN_ONLY_FIELDS and first.config.get(key) != run.config.get(key):
                raise EvalError(
                    f"{run.path} and {first.path} differ in config field {key!r} ({run.config.get(key)!r} vs "
                    f"{first.config.get(key)!r}): the runs of one entry must share their configuration"
                )
    return runs, "training"


def _check_flag(flag: str, given: Any, recorded: Any, run: RunRecord, also: Sequence[Any] = ()) -> None:
    if given is None or given == recorded or given in also:
        return
    raise EvalError(
        f"{flag} {given!r} contradicts the run: {run.path / 'config.json'} records {recorded!r}; leave {flag} "
        "out to evaluate the run as it was trained"
    )


def _same_dataset(first: str, second: str) -> bool:
    """Whether two dataset arguments name the same data (local files: the same file, however it is written)."""
    if first == second:
        return True
    return is_local_path(first) and is_local_path(second) and Path(first).resolve() == Path(second).resolve()


def _trained_on_eval_split(cfg: EvalConfig, run: RunRecord, dataset: str, split: str) -> bool:
    """Whether the evaluation scores the run's training tasks (its ``train_split`` of its own dataset); refused
    without ``--allow-train-on-eval-split``."""
    if not (_same_dataset(dataset, run.dataset) and split == run.train_split):
        return False
    if cfg.allow_train_on_eval_split:
        return True
    given = f"--split {split!r} contradicts the run" if cfg.split is not None else f"the run's eval_split is {split!r}"
    raise EvalError(
        f"{given}: {run.path / 'config.json'} records train_split {run.train_split!r} of dataset {run.dataset!r}, "
        "so this would score the policies on their training tasks; add --allow-train-on-eval-split to do that on "
        "purpose (the entry records trained_on_eval_split: true), or give another --split"
    )


def _policy_plan(cfg: EvalConfig) -> Plan:
    runs, kind = _policy_runs(cfg)
    run = next(iter(runs.values()))
    _check_flag("--env", cfg.env, run.base_env, run, also=[run.env_id])
    same = cfg.dataset is None or _same_dataset(cfg.dataset, run.dataset)
    if cfg.heldout:  # the run's own evaluation: its dataset and eval split, and only them
        _check_flag("--dataset", None if same else cfg.dataset, run.dataset, run)
        _check_flag("--split", cfg.split, run.eval_split, run)
    dataset = run.dataset if same else str(cfg.dataset)  # another dataset: a transfer evaluation
    split = run.eval_split if cfg.split is None else cfg.split
    trained_on_eval_split = _trained_on_eval_split(cfg, run, dataset, split)
    sampling = run.sampling
    for name in ("max_new_tokens", "temperature", "top_k", "top_p"):
        _check_flag(f"--{name.replace('_', '-')}", getattr(cfg, name), getattr(sampling, name), run)
    _check_flag("--chat-template", cfg.chat_template, bool(run.field("chat_template")), run)
    _check_flag("--max-turns", cfg.max_turns, int(run.field("max_turns")), run)
    _check_flag("--feedback", cfg.feedback, run.field("feedback"), run)
    for switch in SWITCH_ENV_FIELDS:
        _check_flag(f"--{switch.replace('_', '-')}", getattr(cfg, switch), bool(run.field(switch)), run)
    tasks = cfg.tasks or 0
    if cfg.heldout:
        tasks = int(run.field("eval_tasks"))
        _check_flag("--tasks", cfg.tasks, tasks, run)
    return Plan(
        env=run.base_env,
        env_kwargs={**run.env_kwargs, "dataset": dataset},
        split=split,
        seeds=tuple(runs),
        tasks=tasks,
        sampling=sampling,
        chat_template=bool(run.field("chat_template")),
        protocol="single" if run.single else "parallel",
        seed_kind=kind,
        runs=runs,
        trained_on_eval_split=trained_on_eval_split,
    )


def entry_env_kwargs(env_id: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` without those the env already has by default, so that a run at the env's defaults is filed
    under the registered spec (the table of the untrained baselines) and any other value under its own."""
    if not kwargs:
        return {}
    default = make(env_id)
    missing = object()
    return {key: value for key, value in kwargs.items() if getattr(default, key, missing) != value}
