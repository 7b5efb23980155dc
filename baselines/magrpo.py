"""MAGRPO: multi-agent group-relative policy optimisation (Liu et al., arXiv 2508.04652).

Every agent samples G responses to its prompt; the joint actions are scored by the env's JOINT reward; the
advantage of a response is its (credited) joint return minus the mean over its G siblings, and the SAME
advantage trains every agent on its own response. Compare with `independent.py`: the two files have the
same skeleton and names, and differ only where the method does (marked `# <- the difference`).

    llm-coop train --env coop_writing-v0 --algo magrpo --output-dir runs/w0

The paper's equations, and where each one is computed (the method in full: docs/method.md):

==========================================================  ===============================================
joint actions a_j = (y_j^1, ..., y_j^n), aligned or cross   `objectives.joint_actions`, `rollout._expand`
joint reward r_j = R(x, a_j) from the env                   `rollout._expand` (env.step on a clone)
return R_j = r_j + gamma * mean over child j's returns      `objectives.compute_tree_returns`
a response's credit: mean (or sum) of R_j over its a_j      `objectives.response_credit`
advantage A_g = R_g - mean_g' R_g'  (no std by default)     `objectives.compute_advantages`
loss -(1/G) sum_g A_g log pi_i(y_g^i | x^i), summed tokens  `objectives.policy_loss`, `Algorithm.loss`
one optimiser step per agent per node                       `algorithm.train_step`
==========================================================  ===============================================

With one agent this is GRPO without std normalisation (the paper's fine-tuned single-model baseline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from baselines.algorithm import Algorithm, GroupBatch
from baselines.config import RunConfig
from baselines.objectives import compute_advantages, response_credit

__all__ = ["MAGRPO", "GroupRelative", "MAGRPOConfig"]


@dataclass
class MAGRPOConfig:
    """The settings of the group-relative advantage (MAGRPO and independent GRPO)."""

    advantage_mode: Literal["mean", "rloo", "max", "raw"] = "mean"
    """Group baseline: mean (MAGRPO), rloo (leave-one-out), max (ReMax-style), raw (no baseline)."""
    normalize_std: bool = False
    """Divide advantages by the group std (off in the paper)."""
    cross_credit: Literal["mean", "sum"] = "mean"
    """cross joint actions: a response's return is the mean (ours) or sum (reference code) over its joint actions."""
    kl_coef: float = 0.0
    """Weight of the KL to the reference policy (LoRA: base without adapters; full: initial copy)."""

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if self.kl_coef < 0:
            raise ValueError(f"config field kl_coef={self.kl_coef!r}: must be >= 0")


class GroupRelative(Algorithm):
    """What MAGRPO and independent GRPO share: their settings, the KL weight, and the G >= 2 check."""

    config_class = MAGRPOConfig
    cfg: MAGRPOConfig

    def check_run(self, run: RunConfig) -> None:
        """A group baseline needs G >= 2: with G = 1 every advantage would be exactly 0 (nothing is learned)."""
        self.cfg.validate()
        if run.num_generations < 2 and self.cfg.advantage_mode != "raw":
            raise ValueError(
                f"config field num_generations={run.num_generations}: advantage_mode {self.cfg.advantage_mode!r} "
                "compares a response with its G - 1 siblings and needs num_generations >= 2 (or --advantage-mode raw)"
            )

    def reference_kl_coef(self) -> float:
        return self.cfg.kl_coef


class MAGRPO(GroupRelative):
    """MAGRPO on the plug-in interface: every agent's response is credited with the joint return."""

    name = "magrpo"
    display_name = "MAGRPO"
    family = "joint-reward"  # <- the difference: trained on the joint reward
    description = "Every agent is trained on the joint reward with a group-relative advantage (arXiv 2508.04652)."
    single_agent_name = "Single-agent GRPO"  # with one agent, MAGRPO is GRPO without std normalisation

    def advantages(self, group: GroupBatch) -> dict[str, torch.Tensor]:
        """agent -> (G,) advantages: every agent's response is credited with the JOINT return."""
        advantages = {}
        for i, agent in enumerate(group.agents):
            returns = group.joint_returns  # (J,) <- the difference: one joint return for every agent
            credit = response_credit(returns, group.joint_actions, i, group.num_generations, self.cfg.cross_credit)
            advantages[agent] = compute_advantages(credit, self.cfg.advantage_mode, self.cfg.normalize_std)  # (G,)
        return advantages
