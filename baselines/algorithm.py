"""The plug-in interface of a learning algorithm, and the registry that finds algorithms by name.

The runner (``baselines.training.train``) owns everything that is not the method: seeding, task order,
rollouts on env branches, tree returns, the optimiser step, logging, checkpoints, evaluation. An algorithm
sees one rollout node at a time as a :class:`GroupBatch` and answers two questions:

1. :meth:`Algorithm.advantages`: one advantage per sampled response, ``{agent: (G,) tensor}``.
2. :meth:`Algorithm.loss`: the scalar loss of one agent's G responses given their token log-probs
   (:class:`LossInput`); the default is the MAGRPO loss ``-(1/G) sum_g A_g log pi(y_g | x)`` with the
   log-prob summed over the response tokens (plus ``kl_coef`` x KL when the config asks for it).

It also declares ``reward_mode`` (``"joint"``: every agent is scored by the joint reward and
``GroupBatch.returns`` has one column; ``"independent"``: one column per agent, each agent's own reward),
``update_epochs`` (optimiser steps per node and agent; PPO-style methods use more than one) and
``config_class`` (a dataclass parsed by ``llm-coop train``; the default ``MAGRPOConfig`` holds the
rollout, sampling and optimiser fields every algorithm needs).

Per node and agent the runner computes the token log-probs of the G responses (with grad), calls ``loss``,
back-propagates, optionally clips the gradient (``max_grad_norm``) and steps that agent's optimiser; this
repeats ``update_epochs`` times. Logged per agent: ``loss/<agent>``, ``grad_norm/<agent>``,
``logprob/<agent>_mean`` (mean summed log-prob), ``kl/<agent>`` (when ``kl_coef > 0``) and whatever
``loss`` returns in its stats dict.

Finding an algorithm (``llm-coop train --algo NAME``): the built-in names ``magrpo`` and ``independent``;
any name registered under the Python entry-point group ``llm_coop_envs.algorithms`` by an installed package
(``[project.entry-points."llm_coop_envs.algorithms"] myalgo = "mypkg.algo:MyAlgo"``); or an import path
``package.module:ClassName``. No file of this project needs editing (docs/add_your_own_algorithm.md).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any, ClassVar, Literal

import torch

from baselines.lm.policies import Completions, Policies
from baselines.objectives import compute_tree_returns, kl_per_sequence, masked_sum, policy_loss
from baselines.rollout import Node, node_stats, rollout_tree, walk

__all__ = [
    "ENTRY_POINT_GROUP",
    "Algorithm",
    "GroupBatch",
    "LossInput",
    "algorithm_card",
    "available_algorithms",
    "config_class_of",
    "load_algorithm",
    "resolve_algorithm",
]

ENTRY_POINT_GROUP = "llm_coop_envs.algorithms"
BUILTIN: dict[str, str] = {"magrpo": "baselines.magrpo:MAGRPO", "independent": "baselines.independent:IndependentGRPO"}


@dataclass(frozen=True)
class GroupBatch:
    """One rollout node: every agent's G sampled responses and what the env returned for the joint actions.

    ``samples[agent]`` (:class:`~baselines.lm.policies.Completions`, G rows, prompt-major) holds
    ``sequences`` (G, P+T) token ids (left-padded prompt + completion), ``prompt_mask`` (G, P),
    ``mask`` (G, T) True on the generated tokens up to and including the first EOS, ``sample_logprobs``
    (G, T) each token's log-prob under the sampling distribution, and ``texts``.
    """

    agents: tuple[str, ...]
    samples: Mapping[str, Completions]
    joint_actions: tuple[tuple[int, ...], ...]
    """J joint actions; ``joint_actions[j][i]`` indexes agent i's response (aligned: j = g for every agent)."""
    rewards: torch.Tensor  # (J, K) immediate rewards: K = 1 (joint mode) or n (independent mode)
    returns: torch.Tensor  # (J, K) reward + gamma * mean child return (= rewards in single-turn envs)
    joint_rewards: torch.Tensor  # (J,) the env's joint reward, whatever the reward mode
    num_generations: int  # G
    turn: int  # 1-based turn of this node
    group_id: int  # index of the node in the step's tree, root = 0 (breadth-first)

    @classmethod
    def from_node(cls, node: Node, group_id: int, num_generations: int) -> GroupBatch:
        assert node.returns is not None and node.joint_rewards is not None
        return cls(
            agents=tuple(node.completions),
            samples=dict(node.completions),
            joint_actions=tuple(tuple(a) for a in node.actions),
            rewards=node.rewards,
            returns=node.returns,
            joint_rewards=node.joint_rewards,
            num_generations=num_generations,
            turn=node.turn,
            group_id=group_id,
        )


@dataclass(frozen=True)
class LossInput:
    """What :meth:`Algorithm.loss` gets for one agent at one node and epoch."""

    agent: str
    samples: Completions
    token_logprobs: torch.Tensor  # (G, T) log pi(token) under the current policy, WITH grad
    old_logprobs: torch.Tensor  # (G, T) the same under the policy before this node's first update (no grad)
    reference_logprobs: torch.Tensor | None  # (G, T) reference policy (no grad), only when kl_coef > 0
    advantages: torch.Tensor  # (G,) from Algorithm.advantages
    epoch: int  # 0 .. update_epochs - 1


class Algorithm(ABC):
    """Base class of a learning algorithm; subclass it, implement :meth:`advantages`, optionally :meth:`loss`."""

    name: ClassVar[str] = "algorithm"
    display_name: ClassVar[str] = ""
    """Name shown on leaderboards (default: the class name)."""
    family: ClassVar[str] = "other"
    """Leaderboard family, e.g. ``joint-reward`` (trained on the joint reward), ``independent-reward``."""
    description: ClassVar[str] = ""
    """One sentence on the method (default: the first line of the class docstring)."""
    reward_mode: ClassVar[Literal["joint", "independent"]] = "joint"
    config_class: ClassVar[type | None] = None
    """The config dataclass (None: ``baselines.magrpo.MAGRPOConfig``); see :func:`config_class_of`."""
    update_epochs: ClassVar[int] = 1

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    @abstractmethod
    def advantages(self, group: GroupBatch) -> dict[str, torch.Tensor]:
        """``{agent: (G,) advantages}`` of the node's responses (the runner logs their mean |A|)."""

    def loss(self, batch: LossInput) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss to minimise and extra stats; default: the MAGRPO summed-token policy gradient."""
        seq_lp = masked_sum(batch.token_logprobs, batch.samples.mask)  # (G,)
        kl = None
        stats: dict[str, float] = {}
        if batch.reference_logprobs is not None:
            kl = kl_per_sequence(batch.token_logprobs, batch.reference_logprobs, batch.samples.mask)  # (G,)
            stats[f"kl/{batch.agent}"] = float(kl.mean())
        return policy_loss(seq_lp, batch.advantages.to(seq_lp.dtype), kl, self.cfg.kl_coef), stats

    # ----- the runner's side (used by baselines.training) ------------------------------------------------------
    @property
    def REWARD_MODE(self) -> str:
        return self.reward_mode

    def train_step(self, env: Any, obs: dict[str, dict], policies: Policies, optimizers: dict, cfg: Any) -> dict:
        """One task: roll out the tree, compute returns, then for every node (root first) the advantages and
        ``update_epochs`` optimiser steps per agent."""
        root = rollout_tree(env, obs, policies, cfg.rollout_settings())
        compute_tree_returns(root, cfg.gamma)
        nodes = walk(root)
        stats = node_stats(root, nodes)
        adv_abs: list[float] = []
        for group_id, node in enumerate(nodes):
            group = GroupBatch.from_node(node, group_id, cfg.num_generations)
            advantages = self.advantages(group)
            adv_abs += [float(a.abs().mean()) for a in advantages.values()]
            stats.update(self._update(policies, optimizers, group, advantages, cfg))
        stats["advantage/abs_mean"] = sum(adv_abs) / len(adv_abs)
        assert root.returns is not None  # filled by compute_tree_returns above
        stats["return/root_mean"] = float(root.returns.mean())
        return stats

    def _update(
        self, policies: Policies, optimizers: dict, group: GroupBatch, advantages: dict[str, torch.Tensor], cfg: Any
    ) -> dict[str, float]:
        stats: dict[str, float] = {}
        old: dict[str, torch.Tensor] = {}
        for epoch in range(self.update_epochs):
            for agent, opt in optimizers.items():
                samples = group.samples[agent]
                token_lp = policies.token_logprobs(agent, samples)  # (G, T)
                if epoch == 0:
                    old[agent] = token_lp.detach()
                reference = policies.token_logprobs(agent, samples, reference=True) if cfg.kl_coef != 0.0 else None
                batch = LossInput(agent, samples, token_lp, old[agent], reference, advantages[agent], epoch)
                loss, extra = self.loss(batch)
                stats.update(extra)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                params = [p for g in opt.param_groups for p in g["params"]]
                if cfg.max_grad_norm is not None:
                    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                else:
                    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
                opt.step()
                opt.zero_grad(set_to_none=True)  # free the gradients now: the next agent's update needs the memory
                stats[f"loss/{agent}"] = float(loss.detach())
                stats[f"grad_norm/{agent}"] = float(grad_norm)
                stats[f"logprob/{agent}_mean"] = float(masked_sum(token_lp.detach(), samples.mask).mean())
        return stats


def algorithm_card(cls: type[Algorithm]) -> dict[str, str]:
    """``{"name", "display_name", "family", "description"}`` of an algorithm class, for leaderboard entries."""
    doc = (cls.__doc__ or "").strip().split("\n\n")[0]
    return {
        "name": cls.name,
        "display_name": cls.display_name or cls.__name__,
        "family": cls.family,
        "description": cls.description or " ".join(doc.split()),
    }


# ----- registry -----------------------------------------------------------------------------------------------
def available_algorithms() -> dict[str, str]:
    """Name -> ``module:Class`` of the built-in and entry-point algorithms (import paths work too)."""
    found = dict(BUILTIN)
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def resolve_algorithm(name: str) -> type[Algorithm]:
    """The Algorithm class for a built-in name, an entry-point name or a ``module:Class`` import path."""
    target = available_algorithms().get(name, name)
    if ":" not in target:
        known = ", ".join(sorted(available_algorithms()))
        raise ValueError(f"algorithm {name!r} unknown; known: {known}; or give an import path 'module:Class'")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"algorithm {name!r}: cannot import module {module_name!r} ({error})") from error
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise ValueError(f"algorithm {name!r}: {target} is not a subclass of baselines.algorithm.Algorithm")
    return cls


def config_class_of(cls: type[Algorithm]) -> type:
    """The config dataclass of an algorithm class (``MAGRPOConfig`` unless it sets ``config_class``)."""
    if cls.config_class is not None:
        return cls.config_class
    from baselines.magrpo import MAGRPOConfig

    return MAGRPOConfig


def load_algorithm(name: str, cfg: Any) -> Algorithm:
    """An instance of the algorithm ``name`` for config ``cfg``."""
    return resolve_algorithm(name)(cfg)
