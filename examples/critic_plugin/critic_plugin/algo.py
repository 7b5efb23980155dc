"""A learned critic on normalised returns: an algorithm with state, an extra module and an entry point.

Written against the public interface only (`baselines.algorithm`, docs/add_your_own_algorithm.md):

* **state**: a running mean and variance of the joint returns seen so far (Welford), saved in every
  checkpoint through ``state_dict`` / ``load_state_dict``, so a resumed run normalises exactly as before;
* **an extra module**: a value head on the concatenated prompt representations of every agent, predicting
  the normalised joint return; the runner optimises, clips, checkpoints and logs it;
* **the entry point**: ``pyproject.toml`` registers it as ``normalised_critic``.

Advantage of joint action j: (R_j - mean) / std - V(s), the same for every agent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from baselines.algorithm import Algorithm, GroupBatch, PolicyInfo, TrainableModule


@dataclass
class NormalisedCriticConfig:
    """Settings of the normalised-return critic."""

    critic_lr: float = 3e-3
    """AdamW learning rate of the value head."""


class NormalisedCritic(Algorithm):
    """Joint-reward actor-critic on returns normalised by running statistics."""

    name = "normalised_critic"
    display_name = "Normalised-return critic (example)"
    family = "joint-reward"
    config_class = NormalisedCriticConfig
    cfg: NormalisedCriticConfig

    def __init__(self, cfg: NormalisedCriticConfig) -> None:
        super().__init__(cfg)
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def trainable_modules(self, policy: PolicyInfo) -> dict[str, TrainableModule]:
        width = sum(policy.hidden_sizes[a] for a in policy.agents)
        self.value = torch.nn.Linear(width, 1)
        return {"value": TrainableModule(self.value, lr=self.cfg.critic_lr, max_grad_norm=1.0)}

    def _normalised(self, returns: torch.Tensor) -> torch.Tensor:  # (J,)
        std = math.sqrt(self.m2 / self.count) if self.count > 1 else 1.0
        return (returns - self.mean) / max(std, 1e-6)

    def _values(self, group: GroupBatch) -> torch.Tensor:  # (J,)
        state = torch.cat([group.representation(a)[0][:1] for a in group.agents], dim=1).detach()  # (1, sum H)
        return self.value(state).squeeze(-1).expand(len(group.joint_actions))

    def _update_running_stats(self, returns: torch.Tensor) -> None:
        for r in returns.tolist():  # Welford's running mean and variance
            self.count += 1
            delta = r - self.mean
            self.mean += delta / self.count
            self.m2 += delta * (r - self.mean)

    def advantages(self, group: GroupBatch) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        self._update_running_stats(group.joint_returns)
        with torch.no_grad():
            advantage = self._normalised(group.joint_returns) - self._values(group).double()  # (J,)
        return {a: advantage for a in group.agents}, {"critic/return_mean": self.mean}

    def module_loss(self, group: GroupBatch) -> tuple[torch.Tensor, dict[str, float]]:
        loss = torch.mean((self._values(group) - self._normalised(group.joint_returns).float()) ** 2)
        return loss, {"critic/loss": float(loss.detach())}

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])
