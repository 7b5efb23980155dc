"""MAAC: multi-agent actor-critic with one centralised critic that sees every agent's prompt and response.

Every agent samples G responses as in MAGRPO and the joint actions are scored by the JOINT reward. A critic
Q(s, a) reads, for a joint action a = (y^1, ..., y^n), each agent's own policy's last-layer hidden state at its
last prompt token and at the last token of its response in a (features detached: the critic trains itself
only), concatenated in agent order, and regresses the joint return. The state value is the critic's mean over
the node's sampled joint actions, V(s) = mean_j Q(s, a_j), and every agent is trained with the advantage of
its joint action (one value per joint action, (J,)). Compare with `iac.py` (one critic per agent, own state).

    llm-coop train --env coop_writing-v0 --algo maac --output-dir runs/w0-maac

==========================================================  =============================================
critic   Q(s, a_j) = MLP([h_1(x^1), h_1(y_j^1), ..., h_n(y_j^n)])  `iac.ValueHead`, `MAAC.q_values`
value    V(s) = mean_j Q(s, a_j)                                   `MAAC.advantages`
advantage A_j = R_j - V(s)   (``--advantage critic``: Q(s, a_j) - V(s))   `MAAC.advantages`
critic loss  mean_j (Q(s, a_j) - R_j)^2                            `MAAC.module_loss`
policy   -(1/J) sum_j A_j log pi_i(y_j^i | x^i), every agent i     the runner's (J,) advantages
==========================================================  =============================================

Logged: ``critic/loss``, ``critic/value`` (V at the root), ``grad_norm/critic``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from baselines.algorithm import Algorithm, GroupBatch, PolicyInfo, TrainableModule
from baselines.iac import CriticSettings, ValueHead

__all__ = ["MAAC", "MAACConfig"]


@dataclass
class MAACConfig(CriticSettings):
    """Centralised-critic actor-critic settings."""

    advantage: Literal["return", "critic"] = "return"
    """return: A_j = R_j - V(s) (Monte-Carlo return, critic baseline); critic: A_j = Q(s, a_j) - V(s)."""


class MAAC(Algorithm):
    """Centralised-critic actor-critic on the joint reward: every agent gets its joint action's advantage."""

    name = "maac"
    display_name = "MAAC"
    family = "joint-reward"
    description = "Multi-agent actor-critic: a centralised critic of every agent's prompt and response."
    config_class = MAACConfig
    cfg: MAACConfig

    def trainable_modules(self, policy: PolicyInfo) -> dict[str, TrainableModule]:
        width = sum(2 * policy.hidden_sizes[a] for a in policy.agents)
        self.critic = ValueHead(width, self.cfg.critic_hidden)  # Q(s, a) from the (J, F) joint features
        return {"critic": self.cfg.trainable(self.critic)}

    def features(self, group: GroupBatch) -> torch.Tensor:  # (J, 2 * sum H)
        """Per joint action: every agent's prompt and response features, in agent order (detached)."""
        parts = []
        for i, agent in enumerate(group.agents):
            prompt, response = group.representation(agent)  # (G, H) each
            rows = torch.tensor([a[i] for a in group.joint_actions])  # (J,) agent i's response in joint action j
            parts += [prompt[rows].detach(), response[rows].detach()]
        return torch.cat(parts, dim=1)

    def q_values(self, group: GroupBatch) -> torch.Tensor:  # (J,)
        return self.critic(self.features(group))

    def advantages(self, group: GroupBatch) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """agent -> (J,) the advantage of each joint action, the same for every agent."""
        with torch.no_grad():
            q = self.q_values(group).to(group.joint_returns.dtype)  # (J,)
        value = q.mean()
        target = group.joint_returns if self.cfg.advantage == "return" else q
        advantage = target - value  # (J,)
        stats = {"critic/value": float(value)} if group.group_id == 0 else {}
        return {agent: advantage for agent in group.agents}, stats

    def module_loss(self, group: GroupBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean squared error of Q(s, a_j) against the joint returns R_j."""
        loss = torch.mean((self.q_values(group) - group.joint_returns.float()) ** 2)
        return loss, {"critic/loss": float(loss.detach())}
