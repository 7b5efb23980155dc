"""IAC: independent actor-critic. Each agent has its own value head on its own policy's representation.

Every agent samples G responses as in MAGRPO; instead of the mean of its G siblings, a response's baseline is
a learned state value V_i(s_i): a small MLP on the agent's own policy's last-layer hidden state at the last
prompt token (its "trunk"; the features are detached, so the critic trains its head only and the policy is
trained by the policy loss alone). The critic regresses the Monte-Carlo return of the channel the agent is
trained on. Compare with `maac.py` (one centralised critic that sees every agent's prompt and response).

    llm-coop train --env coop_writing-v0 --algo iac --output-dir runs/w0-iac          # own rewards
    llm-coop train --env coop_writing-v0 --algo iac --reward joint ...                 # the joint reward

================================================  ==============================================
value     V_i(s) = head_i(h_i(s))                   `ValueHead`, `IAC.values`
advantage A_g^i = R_g^i - V_i(s)                    `IAC.advantages`
critic    L = mean_i mean_g (V_i(s) - R_g^i)^2      `IAC.module_loss`
policy    -(1/G) sum_g A_g^i log pi_i(y_g^i | s)    the default `Algorithm.loss`
================================================  ==============================================

R^i is agent i's own return (``--reward own``, the default) or the joint return (``--reward joint``).
Logged: ``critic/loss``, ``critic/<agent>_value`` (V at the root), ``grad_norm/critic_<agent>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from baselines.algorithm import Algorithm, GroupBatch, PolicyInfo, TrainableModule

__all__ = ["IAC", "CriticSettings", "IACConfig", "ValueHead"]


@dataclass
class CriticSettings:
    """How a learned critic is built and optimised (IAC's heads, MAAC's central critic)."""

    critic_lr: float = 1e-3
    """AdamW learning rate of the critic."""
    critic_hidden: int = 64
    """Width of the critic's hidden layer."""
    critic_max_grad_norm: float | None = 1.0
    """Clip the critic's gradient norm; None = no clipping."""

    def trainable(self, module: torch.nn.Module) -> TrainableModule:
        return TrainableModule(module, lr=self.critic_lr, max_grad_norm=self.critic_max_grad_norm)


@dataclass
class IACConfig(CriticSettings):
    """Independent actor-critic settings."""

    reward: Literal["own", "joint"] = "own"
    """Which return each agent's critic learns and its advantage uses: its own, or the joint one."""


class ValueHead(torch.nn.Module):
    """A two-layer MLP from (B, F) features to (B,) values."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (B, H) -> (B,)
        return self.net(features.float()).squeeze(-1)


class IAC(Algorithm):
    """Independent actor-critic: each agent's response is credited with its return minus its own critic's V."""

    name = "iac"
    display_name = "IAC"
    family = "independent-reward"  # with --reward joint, the entry's config records the joint reward
    description = "Independent actor-critic: each agent's own value head on its own policy's representation."
    config_class = IACConfig
    cfg: IACConfig

    def trainable_modules(self, policy: PolicyInfo) -> dict[str, TrainableModule]:
        self.heads = {a: ValueHead(policy.hidden_sizes[a], self.cfg.critic_hidden) for a in policy.agents}
        return {f"critic_{a}": self.cfg.trainable(head) for a, head in self.heads.items()}

    def targets(self, group: GroupBatch) -> dict[str, torch.Tensor]:
        """agent -> (G,) the return its critic regresses (aligned joint actions: joint action g = response g)."""
        if len(group.joint_actions) != group.num_generations:
            raise ValueError("IAC needs aligned joint actions (--joint-mode aligned)")
        if self.cfg.reward == "joint":
            return {a: group.joint_returns for a in group.agents}
        return {a: group.individual_returns[:, i] for i, a in enumerate(group.agents)}

    def values(self, group: GroupBatch) -> dict[str, torch.Tensor]:
        """agent -> (G,) V_i(s) of the node's state (the same for the G rows: one prompt per node)."""
        out = {}
        for agent in group.agents:
            prompt_features, _ = group.representation(agent)  # (G, H), no grad
            out[agent] = self.heads[agent](prompt_features.detach())  # (G,)
        return out

    def advantages(self, group: GroupBatch) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """agent -> (G,) A = R - V(s), and the values at this node."""
        targets = self.targets(group)
        with torch.no_grad():
            values = self.values(group)
        advantages = {a: targets[a] - values[a].to(targets[a].dtype) for a in group.agents}  # (G,)
        stats = {f"critic/{a}_value": float(v.mean()) for a, v in values.items()} if group.group_id == 0 else {}
        return advantages, stats

    def module_loss(self, group: GroupBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean squared error of every agent's V(s) against its returns."""
        targets = self.targets(group)
        values = self.values(group)
        losses = [torch.mean((values[a] - targets[a].float()) ** 2) for a in group.agents]
        loss = torch.stack(losses).mean()
        return loss, {"critic/loss": float(loss.detach())}
