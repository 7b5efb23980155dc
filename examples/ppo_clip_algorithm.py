"""A user-written algorithm: multi-agent PPO-clip with leave-one-out (RLOO) advantages on the joint return.

Written ONLY against the public plug-in interface (`baselines.algorithm`); no project file was edited to
add it. Train it through the same runner as MAGRPO, by import path:

    llm-coop train --env coop_writing-v0 --algo examples.ppo_clip_algorithm:MultiAgentPPOClip --steps 50

(or register it as an entry point of your own package, see docs/add_your_own_algorithm.md).

What it does differently from MAGRPO:
* advantage of joint action g: R_g minus the mean of the OTHER G-1 joint returns (leave-one-out);
* ``update_epochs = 2`` optimiser steps per node and agent on the same samples, with the per-token
  importance ratio r_t = pi(y_t) / pi_old(y_t) clipped to [1 - eps, 1 + eps] (PPO's pessimistic bound);
  the per-sequence objective sums the clipped terms over the response tokens and averages over the G
  responses (no length normalisation, like MAGRPO's summed log-prob).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from baselines.algorithm import Algorithm, GroupBatch, LossInput
from baselines.config import RunConfig


@dataclass
class PPOClipConfig:
    """This algorithm's own settings (the runner's are `baselines.config.RunConfig`)."""

    clip_eps: float = 0.2
    """PPO clip range epsilon: the ratio is clipped to [1 - eps, 1 + eps]."""


class MultiAgentPPOClip(Algorithm):
    """Joint-reward PPO-clip with RLOO advantages; every agent uses the advantage of its joint action."""

    name = "ppo_clip"
    display_name = "Multi-agent PPO-clip (RLOO)"
    family = "joint-reward"
    config_class = PPOClipConfig
    update_epochs = 2
    cfg: PPOClipConfig

    def check_run(self, run: RunConfig) -> None:
        if run.num_generations < 2:
            raise ValueError("config field num_generations: leave-one-out advantages need num_generations >= 2")
        if run.joint_mode != "aligned":
            raise ValueError("config field joint_mode: this example supports aligned joint actions only")

    def advantages(self, group: GroupBatch) -> dict[str, torch.Tensor]:
        G = group.num_generations
        returns = group.joint_returns  # (G,) joint return of joint action g (aligned: J = G)
        loo_mean = (returns.sum() - returns) / (G - 1)  # (G,) mean of the other G-1
        advantage = returns - loo_mean  # (G,)
        return {agent: advantage for agent in group.agents}

    def loss(self, batch: LossInput) -> tuple[torch.Tensor, dict[str, float]]:
        mask = batch.samples.mask.to(batch.token_logprobs.dtype)  # (G, T)
        ratio = torch.exp(batch.token_logprobs - batch.old_logprobs)  # (G, T)
        adv = batch.advantages.to(ratio.dtype)[:, None]  # (G, 1)
        eps = self.cfg.clip_eps
        unclipped, clipped = ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv  # (G, T)
        objective = (torch.minimum(unclipped, clipped) * mask).sum(dim=1)  # (G,)
        clip_fraction = float(((ratio - 1).abs() > eps).float().mul(mask).sum() / mask.sum().clamp(min=1))
        return -objective.mean(), {f"clip_fraction/{batch.agent}": clip_fraction}
