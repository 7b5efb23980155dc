"""MAGRPO: multi-agent group-relative policy optimisation (Liu et al., arXiv 2508.04652).

Every agent samples G responses to its prompt; the joint actions are scored by the env's JOINT reward; the
advantage of a response is its (credited) joint return minus the mean over its G siblings, and the SAME
advantage trains every agent on its own response. Compare with `independent.py`: the two files have the
same skeleton and names, and differ only where the method does (marked `# <- the difference`).

    llm-coop train --env coop_writing-v0 --algo magrpo --output-dir runs/w0

With one agent this is GRPO without std normalisation (the paper's fine-tuned single-model baseline).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from baselines.algorithm import Algorithm, GroupBatch
from baselines.lm.policies import Policies, SamplingConfig
from baselines.objectives import compute_advantages, response_credit
from baselines.rollout import RolloutSettings


@dataclass
class MAGRPOConfig:
    """MAGRPO settings. Defaults: the embedded model on CPU (LEARNING_ON_CPU.md); `--preset` for the paper."""

    env: str = "coop_writing-v0"
    """Registered env id (see `llm_coop_envs.registry_ids()`)."""
    model: str | None = None
    """HF causal LM name or local path for every agent; None = the embedded default model (no download)."""
    agent_models: tuple[str, ...] = ()
    """One model per agent (in `possible_agents` order), overriding `model`: heterogeneous teams."""
    finetune: Literal["auto", "lora", "full"] = "auto"
    """lora = one frozen base + one adapter per agent; full = a full copy per agent (the paper); auto = full
    for the embedded model (LoRA at high lr degenerated there, LEARNING_ON_CPU.md), lora otherwise."""
    steps: int = 450
    """Training steps; one step = one task (the root of one rollout tree)."""
    seed: int = 0
    """Seed of the task order, the sampling and the LoRA init (evaluation uses fixed seeds for every run)."""
    output_dir: Path = Path("runs/magrpo")
    """Where metrics.jsonl, eval.jsonl, checkpoint.pt, final/ and reward_curve.png go."""
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
    joint_mode: Literal["aligned", "cross"] = "aligned"
    """aligned: the g-th responses form joint action g (G joint actions); cross: all G**n combinations."""
    cross_credit: Literal["mean", "sum"] = "mean"
    """cross mode: a response's return is the mean (ours) or sum (reference code) over its joint actions."""
    advantage_mode: Literal["mean", "rloo", "max", "raw"] = "mean"
    """Group baseline: mean (MAGRPO), rloo (leave-one-out), max (ReMax-style), raw (no baseline)."""
    normalize_std: bool = False
    """Divide advantages by the group std (off in the paper)."""
    max_turns: int = 1
    """Turns per episode passed to the env (writing: 1; coding: 1 or 2)."""
    gamma: float = 0.9
    """Discount of child returns in multi-turn trees (paper-era code: 0.9)."""
    early_termination: float | None = None
    """Stop expanding a node whose mean immediate reward exceeds this; None = off (reference: -0.2)."""
    kl_coef: float = 0.0
    """Weight of the KL to the reference policy (LoRA: base without adapters; full: initial copy)."""
    max_grad_norm: float | None = None
    """Clip each agent's gradient norm to this; None = no clipping."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA alpha (scale = alpha / r)."""
    chat_template: bool = False
    """Wrap each prompt in the tokenizer's chat template (paper: no)."""
    dataset: str = "bundled"
    """Env dataset argument."""
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
    """Continue from output_dir/checkpoint.pt."""
    threads: int = 1
    """torch CPU threads (1 gives bit-identical reruns)."""
    device: str = "cpu"
    """torch device, e.g. cpu or cuda."""
    bf16: bool = False
    """Load models in bfloat16 (GPU)."""

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        checks = [
            ("steps", self.steps >= 1, "must be >= 1"),
            ("num_generations", self.num_generations >= 1, "must be >= 1"),
            ("max_new_tokens", self.max_new_tokens >= 1, "must be >= 1"),
            ("temperature", self.temperature >= 0, "must be >= 0"),
            ("top_k", self.top_k >= 0, "must be >= 0"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("lr", self.lr > 0, "must be > 0"),
            ("max_turns", self.max_turns >= 1, "must be >= 1"),
            ("gamma", 0 <= self.gamma <= 1, "must be in [0, 1]"),
            ("kl_coef", self.kl_coef >= 0, "must be >= 0"),
            ("max_grad_norm", self.max_grad_norm is None or self.max_grad_norm > 0, "must be > 0 or None"),
            ("eval_every", self.eval_every >= 0, "must be >= 0"),
            ("eval_seeds", self.eval_seeds >= 1, "must be >= 1"),
            ("save_every", self.save_every >= 1, "must be >= 1"),
            (
                "advantage_mode",
                self.advantage_mode != "rloo" or self.num_generations >= 2,
                "rloo needs num_generations >= 2",
            ),
            (
                "joint_mode",
                self.joint_mode == "aligned" or self.max_turns == 1,
                "cross is single-turn only (G**n children per node)",
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


PRESETS: dict[str, dict] = {
    "embedded-demo": dict(  # LEARNING_ON_CPU.md: the setting that learned on 2 CPU cores
        model=None,
        finetune="full",  # two full copies of the ~1M embedded model
        lr=2e-4,
        num_generations=4,  # lr 2e-4 stable (5e-4 collapsed); G = 4
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=96,  # plain sampling, 96 new tokens
        steps=450,  # 450 steps: 0.69 -> 2.33 held-out in the trial
    ),
    "paper-writing": dict(  # MAGRPO_SPEC.md section 6, writing (TLDR)
        env="coop_writing-v0",
        model="Qwen/Qwen3-1.7B",
        finetune="full",  # 2 x Qwen3-1.7B, full fine-tuning
        lr=5e-6,
        num_generations=4,
        max_new_tokens=256,  # lr 5e-6, G = 4, 256 new tokens
        temperature=0.7,
        top_p=0.9,
        top_k=50,  # sampling 0.7 / 0.9 / 50
        steps=1000,
        chat_template=False,  # 1 epoch over 1000 prompts, batch 1; no chat template
    ),
    "paper-coding": dict(  # MAGRPO_SPEC.md section 6, coding (HumanEval)
        env="coop_coding-v0",
        model="Qwen/Qwen2.5-Coder-3B",
        finetune="full",  # 2 x Qwen2.5-Coder-3B (base)
        lr=1e-5,
        num_generations=4,
        max_new_tokens=256,  # lr 1e-5, G = 4, 256 new tokens
        temperature=0.7,
        top_p=0.9,
        top_k=0,  # 0.7 / 0.9 on HumanEval
        max_turns=2,
        gamma=0.9,
        steps=2000,  # H = 2 with level feedback, gamma 0.9, ~1.5K-2K steps
    ),
}


def preset(name: str | None, config_cls: type = MAGRPOConfig) -> MAGRPOConfig:
    """The config with a named preset's values applied (None: plain defaults)."""
    if name is None:
        return config_cls()
    if name not in PRESETS:
        raise ValueError(f"preset {name!r} unknown; presets: {', '.join(PRESETS)}")
    return dataclasses.replace(config_cls(), **PRESETS[name])


class MAGRPO(Algorithm):
    """MAGRPO on the plug-in interface: the runner (`Algorithm.train_step`) rolls out, computes returns and
    updates with the summed-token policy-gradient loss; MAGRPO supplies the advantages."""

    name = "magrpo"
    display_name = "MAGRPO"
    family = "joint-reward"
    description = "Every agent is trained on the joint reward with a group-relative advantage (Liu et al., arXiv 2508.04652)."
    reward_mode = "joint"  # <- the difference: every agent is scored by the joint reward
    config_class = MAGRPOConfig

    def advantages(self, group: GroupBatch) -> dict[str, torch.Tensor]:
        """agent -> (G,) advantages: every agent's response is credited with the JOINT return."""
        advantages = {}
        for i, agent in enumerate(group.agents):
            returns = group.returns[:, 0]  # (J,) <- the difference: one joint return for every agent
            credit = response_credit(returns, group.joint_actions, i, group.num_generations, self.cfg.cross_credit)
            advantages[agent] = compute_advantages(credit, self.cfg.advantage_mode, self.cfg.normalize_std)  # (G,)
        return advantages


REWARD_MODE = MAGRPO.reward_mode


def train_step(env, obs, policies: Policies, optimizers: dict, cfg: MAGRPOConfig) -> dict:
    """One task (one rollout tree) of MAGRPO: `MAGRPO(cfg).train_step`."""
    return MAGRPO(cfg).train_step(env, obs, policies, optimizers, cfg)
