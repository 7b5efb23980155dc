"""The plug-in interface of a learning algorithm, the runner's step that drives it, and the algorithm registry.

The runner (:func:`train_step` here, the loop in ``baselines.training``) owns everything that is not the
method: seeding, task order, rollouts on env branches, tree returns, the optimiser step, logging,
checkpoints, evaluation. An algorithm sees one rollout node at a time as a :class:`GroupBatch`, which
always carries BOTH reward channels (the joint return ``(J,)`` and every agent's own return ``(J, n)``),
and answers two questions:

1. :meth:`Algorithm.advantages`: one advantage per sampled response, ``{agent: (G,) tensor}``; which reward
   channel trains which agent is decided here and nowhere else.
2. :meth:`Algorithm.loss`: the scalar loss of one agent's G responses given their token log-probs
   (:class:`LossInput`); the default is the MAGRPO loss ``-(1/G) sum_g A_g log pi(y_g | x)`` with the
   log-prob summed over the response tokens (plus ``reference_kl_coef()`` x KL when that is non-zero).

It also declares ``update_epochs`` (optimiser steps per node and agent; PPO-style methods use more than one),
``config_class`` (a dataclass of the algorithm's OWN settings, parsed by ``llm-coop train`` next to the
runner's :class:`baselines.config.RunConfig`; None = no settings of its own), :meth:`check_run` (refuse
runner settings the method cannot use) and ``display_name`` / ``family`` / ``description`` (its
leaderboard card).

Per node and agent the runner computes the token log-probs of the G responses (with grad), calls ``loss``,
back-propagates, optionally clips the gradient (``max_grad_norm``) and steps that agent's optimiser; this
repeats ``update_epochs`` times. With ``tasks_per_step`` > 1 (:func:`train_on_tasks`) the gradients of every
node of the step's tasks are accumulated (and summed over torchrun ranks) before one step. Logged per agent: ``loss/<agent>``, ``grad_norm/<agent>``,
``logprob/<agent>_mean`` (mean summed log-prob), ``kl/<agent>`` (when the KL coefficient is non-zero) and
whatever ``loss`` returns in its stats dict.

Finding an algorithm (``llm-coop train --algo NAME``): the built-in names ``magrpo``, ``independent``,
``iac`` and ``maac``;
any name registered under the Python entry-point group ``llm_coop_envs.algorithms`` by an installed package
(``[project.entry-points."llm_coop_envs.algorithms"] myalgo = "mypkg.algo:MyAlgo"``); or an import path
``package.module:ClassName``. No file of this project needs editing (docs/add_your_own_algorithm.md).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from baselines.lm.completions import Completions
from baselines.lm.policies import Policies
from baselines.objectives import (
    NonFiniteLossError,
    compute_tree_returns,
    kl_per_sequence,
    masked_sum,
    policy_loss,
    response_credit,
)
from baselines.rollout import JOINT, Node, Sampler, node_stats, rollout_tree, walk

if TYPE_CHECKING:
    from baselines.config import RunConfig

__all__ = [
    "ENTRY_POINT_GROUP",
    "Algorithm",
    "GroupBatch",
    "LossInput",
    "ModuleSet",
    "PolicyInfo",
    "TrainableModule",
    "algorithm_card",
    "available_algorithms",
    "load_algorithm",
    "mean_stats",
    "resolve_algorithm",
    "roll_out_task",
    "train_on_tasks",
    "train_step",
]

ENTRY_POINT_GROUP = "llm_coop_envs.algorithms"
BUILTIN: dict[str, str] = {
    "magrpo": "baselines.magrpo:MAGRPO",
    "independent": "baselines.independent:IndependentGRPO",
    "iac": "baselines.iac:IAC",
    "maac": "baselines.maac:MAAC",
}


@dataclass(frozen=True)
class GroupBatch:
    """One rollout node: every agent's G sampled responses and what the env returned for the joint actions.

    ``samples[agent]`` (:class:`~baselines.lm.completions.Completions`, G rows, prompt-major) holds
    ``sequences`` (G, P+T) token ids (left-padded prompt + completion), ``prompt_mask`` (G, P),
    ``mask`` (G, T) True on the generated tokens up to and including the first EOS, ``sample_logprobs``
    (G, T) each token's log-prob under the sampling distribution, and ``texts``. Both reward channels are
    always present; returns are ``reward + gamma * mean child return`` (= rewards in single-turn envs).
    """

    agents: tuple[str, ...]
    samples: Mapping[str, Completions]
    joint_actions: tuple[tuple[int, ...], ...]
    """J joint actions; ``joint_actions[j][i]`` indexes agent i's response (aligned: j = g for every agent)."""
    joint_rewards: torch.Tensor  # (J,) the env's joint reward of each joint action
    joint_returns: torch.Tensor  # (J,) discounted joint return
    individual_rewards: torch.Tensor  # (J, n) column i: agent i's own reward (the env's individual_reward)
    individual_returns: torch.Tensor  # (J, n) discounted own return of each agent
    num_generations: int  # G
    turn: int  # 1-based turn of this node
    group_id: int  # index of the node in the step's tree, root = 0 (breadth-first)
    step: int = 0  # 0-based training step
    task_id: str | None = None  # the task of this step's tree
    infos: tuple[Mapping[str, Mapping[str, Any]], ...] = ()
    """Per joint action, the env's ``infos`` (agent -> its info: breakdown, joint and individual reward)."""
    policies: Policies | None = field(default=None, repr=False, compare=False)
    _features: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False, compare=False)

    def prompt_ids(self, agent: str) -> tuple[torch.Tensor, torch.Tensor]:  # (G, P), (G, P)
        """The agent's left-padded prompt token ids and their attention mask (identical rows at one node)."""
        c = self.samples[agent]
        return c.sequences[:, : c.prompt_width], c.prompt_mask

    def representation(self, agent: str, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:  # (G, H) x 2
        """The agent's own policy's last-layer hidden state at its last prompt token and at each response's last
        token; with ``grad`` the policy's trainable tensors get gradients through them (one extra forward)."""
        if self.policies is None:
            raise ValueError("this GroupBatch was built without policies: no representation available")
        if grad:
            return self.policies.representation(agent, self.samples[agent], grad=True)
        if agent not in self._features:  # computed once per node
            self._features[agent] = self.policies.representation(agent, self.samples[agent], grad=False)
        return self._features[agent]

    @classmethod
    def from_node(
        cls,
        node: Node,
        group_id: int,
        num_generations: int,
        step: int = 0,
        task_id: str | None = None,
        policies: Policies | None = None,
    ) -> GroupBatch:
        if node.returns is None:
            raise ValueError("GroupBatch.from_node needs tree returns: call compute_tree_returns first")
        return cls(
            agents=tuple(node.completions),
            samples=dict(node.completions),
            joint_actions=tuple(tuple(a) for a in node.actions),
            joint_rewards=node.rewards[:, JOINT],
            joint_returns=node.returns[:, JOINT],
            individual_rewards=node.rewards[:, JOINT + 1 :],
            individual_returns=node.returns[:, JOINT + 1 :],
            num_generations=num_generations,
            turn=node.turn,
            group_id=group_id,
            step=step,
            task_id=task_id,
            infos=tuple(node.infos),
            policies=policies,
        )


@dataclass(frozen=True)
class LossInput:
    """What :meth:`Algorithm.loss` gets for one agent at one node and epoch."""

    agent: str
    samples: Completions
    token_logprobs: torch.Tensor  # (G, T) log pi(token) under the current policy, WITH grad
    old_logprobs: torch.Tensor  # (G, T) the same under the policy before this node's first update (no grad)
    reference_logprobs: torch.Tensor | None  # (G, T) reference policy (no grad), only when the KL coef != 0
    advantages: torch.Tensor  # (G,) from Algorithm.advantages
    epoch: int  # 0 .. update_epochs - 1
    token_weights: torch.Tensor | None = None
    """(G, T) truncated importance weights min(pi_old / pi_engine, cap) per token (no grad) when the responses
    were sampled by an external engine (vLLM) and ``RunConfig.tis_cap`` is set; None otherwise."""


@dataclass
class TrainableModule:
    """An extra module an algorithm trains (a value head, a critic), with its own optimiser settings. The
    runner moves it to the device, optimises it with AdamW on :meth:`Algorithm.module_loss`, clips it,
    checkpoints it (weights and optimiser state) and logs ``grad_norm/<name>``."""

    module: torch.nn.Module
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_grad_norm: float | None = None


@dataclass(frozen=True)
class PolicyInfo:
    """What an algorithm may know of the policies when it builds its modules."""

    agents: tuple[str, ...]
    hidden_sizes: Mapping[str, int]  # width H of each agent's representation
    device: str


Advantages = dict[str, torch.Tensor]
"""agent -> (G,) one advantage per response, or (J,) one per joint action (each response then gets the sum of
its joint actions' advantages, scaled by G / J: the loss averages over the J joint actions)."""


class Algorithm(ABC):
    """Base class of a learning algorithm; subclass it, implement :meth:`advantages`, optionally :meth:`loss`."""

    name: ClassVar[str] = "algorithm"
    display_name: ClassVar[str] = ""
    """Name shown on leaderboards (default: the class name)."""
    family: ClassVar[str] = "other"
    """Leaderboard family, e.g. ``joint-reward`` (trained on the joint reward), ``independent-reward``."""
    description: ClassVar[str] = ""
    """One sentence on the method (default: the first paragraph of the class docstring)."""
    single_agent_name: ClassVar[str] = ""
    """Name of the method with one agent, on the env's single-agent view (default: "Single-agent <name>")."""
    config_class: ClassVar[type | None] = None
    """Dataclass of the algorithm's own settings (one flag per field), or None when it has none."""
    update_epochs: ClassVar[int] = 1

    def __init__(self, cfg: Any = None) -> None:
        if self.config_class is not None and not isinstance(cfg, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(cfg).__name__}")
        self.cfg = cfg

    @abstractmethod
    def advantages(self, group: GroupBatch) -> Advantages | tuple[Advantages, dict[str, float]]:
        """``{agent: (G,) or (J,) advantages}`` of the node (see :data:`Advantages`), optionally with a dict
        of stats to log (the runner also logs their mean |A|)."""

    def trainable_modules(self, policy: PolicyInfo) -> dict[str, TrainableModule]:
        """Extra modules to train (default: none); called once by the runner, after the policies exist."""
        return {}

    def module_loss(self, group: GroupBatch) -> tuple[torch.Tensor, dict[str, float]] | None:
        """The loss of the extra modules at one node (before the policy updates; default: None)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """State the algorithm keeps between steps beyond its modules (running statistics...); checkpointed."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` on resume."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state but a checkpoint holds {sorted(state)}")

    def check_run(self, run: RunConfig) -> None:
        """Raise ValueError naming the runner field this algorithm cannot train with (default: accept all)."""
        return None

    def reference_kl_coef(self) -> float:
        """Weight of the KL to the reference policy in the default loss; non-zero makes the runner keep a
        reference policy and compute its log-probs (default 0)."""
        return 0.0

    def loss(self, batch: LossInput) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss to minimise and extra stats; default: the MAGRPO summed-token policy gradient."""
        token_lp = batch.token_logprobs
        if batch.token_weights is not None:
            token_lp = token_lp * batch.token_weights
        seq_lp = masked_sum(token_lp, batch.samples.mask)  # (G,)
        kl = None
        stats: dict[str, float] = {}
        if batch.reference_logprobs is not None:
            kl = kl_per_sequence(batch.token_logprobs, batch.reference_logprobs, batch.samples.mask)  # (G,)
            stats[f"kl/{batch.agent}"] = float(kl.detach().mean())
        return policy_loss(seq_lp, batch.advantages.to(seq_lp.dtype), kl, self.reference_kl_coef()), stats


# ----- the runner's step ------------------------------------------------------------------------------------
class ModuleSet:
    """The runner's side of an algorithm's extra modules: one AdamW each, a shared backward, per-module
    clipping, checkpoint state."""

    def __init__(self, modules: Mapping[str, TrainableModule], device: str) -> None:
        self.modules = dict(modules)
        for spec in self.modules.values():
            spec.module.to(device)
        self.optimizers = {
            name: torch.optim.AdamW(spec.module.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
            for name, spec in self.modules.items()
        }

    def step(self, loss: torch.Tensor) -> dict[str, float]:
        """Back-propagate the modules' loss, clip each module, step each optimiser; the gradient norms."""
        self.zero_grad()
        self.backward(loss)
        return self.finish()

    def zero_grad(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradient of one loss (a step may hold several)."""
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"non-finite module loss {float(loss)}; stopping instead of skipping the update")
        loss.backward()

    def finish(self, reduce: Callable[[Sequence[torch.nn.Parameter]], None] | None = None) -> dict[str, float]:
        """Sum the accumulated gradients over the ranks (``reduce``), clip each module, step each optimiser;
        the gradient norms."""
        stats = {}
        for name, spec in self.modules.items():
            params = list(spec.module.parameters())
            if reduce is not None:
                reduce(params)
            if spec.max_grad_norm is not None:
                norm = torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm)
            else:
                norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            self.optimizers[name].step()
            self.optimizers[name].zero_grad(set_to_none=True)
            stats[f"grad_norm/{name}"] = float(norm)
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {
            "modules": {n: spec.module.state_dict() for n, spec in self.modules.items()},
            "optimizers": {n: opt.state_dict() for n, opt in self.optimizers.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state["modules"]) != set(self.modules):
            raise ValueError(f"checkpoint modules {sorted(state['modules'])} != the algorithm's {sorted(self.modules)}")
        for name, spec in self.modules.items():
            spec.module.load_state_dict(state["modules"][name])
            self.optimizers[name].load_state_dict(state["optimizers"][name])


GradReducer = Callable[[Sequence[torch.nn.Parameter]], None]
"""Sums the gradients of the given parameters over data-parallel ranks, in place (no-op in one process)."""


def _no_reduce(params: Sequence[torch.nn.Parameter]) -> None:
    return None


def train_step(
    algorithm: Algorithm,
    env: Any,
    obs: dict[str, dict],
    policies: Policies,
    optimizers: dict,
    run: RunConfig,
    modules: ModuleSet | None = None,
    step: int = 0,
    task_id: str | None = None,
    sampler: Sampler | None = None,
) -> dict[str, Any]:
    """One task (``tasks_per_step`` = 1, one process): roll out the tree, compute returns, then for every
    node (root first) the algorithm's advantages, its modules' update (if any) and ``update_epochs``
    optimiser steps per agent: one update per tree node, as in the paper."""
    root, nodes, stats = _roll_out(env, obs, policies, run, sampler)
    adv_abs: list[float] = []
    for group_id, node in enumerate(nodes):
        group, advantages = _node_advantages(algorithm, node, group_id, run, step, task_id, policies, stats, adv_abs)
        module_loss = _module_loss(algorithm, group, modules)
        if module_loss is not None:
            stats.update(module_loss[1])
            stats.update(modules.step(module_loss[0]))  # type: ignore[union-attr]  # checked by _module_loss
        stats.update(_update(algorithm, policies, optimizers, [(group, advantages)], run, 1, _no_reduce)[0])
    return _with_step_stats(stats, adv_abs, root)


@dataclass
class TaskTree:
    """One task's rollout tree, ready for a batched update: every node as a GroupBatch with its advantages
    (all computed before any update of the step) and the task's own statistics."""

    groups: list[GroupBatch]
    advantages: list[dict[str, torch.Tensor]]
    stats: dict[str, Any]


def roll_out_task(
    algorithm: Algorithm,
    env: Any,
    obs: dict[str, dict],
    policies: Policies,
    run: RunConfig,
    step: int = 0,
    task_id: str | None = None,
    sampler: Sampler | None = None,
) -> TaskTree:
    """The rollout tree of one task with its returns and every node's advantages, not yet trained on."""
    root, nodes, stats = _roll_out(env, obs, policies, run, sampler)
    adv_abs: list[float] = []
    pairs = [
        _node_advantages(algorithm, node, group_id, run, step, task_id, policies, stats, adv_abs)
        for group_id, node in enumerate(nodes)
    ]
    return TaskTree([g for g, _ in pairs], [a for _, a in pairs], _with_step_stats(stats, adv_abs, root))


def _roll_out(env, obs, policies: Policies, run: RunConfig, sampler: Sampler | None) -> tuple[Node, list[Node], dict]:
    """The task's rollout tree with its returns, its nodes (root first) and its reward statistics."""
    root = rollout_tree(env, obs, policies, run.rollout_settings(), sampler)
    compute_tree_returns(root, run.gamma)
    nodes = walk(root)
    return root, nodes, node_stats(root, nodes)


def _node_advantages(
    algorithm: Algorithm,
    node: Node,
    group_id: int,
    run: RunConfig,
    step: int,
    task_id: str | None,
    policies: Policies,
    stats: dict[str, Any],
    adv_abs: list[float],
) -> tuple[GroupBatch, dict[str, torch.Tensor]]:
    """The node as a GroupBatch and its advantages; the algorithm's stats go to ``stats``, each agent's mean
    |A| to ``adv_abs``."""
    group = GroupBatch.from_node(node, group_id, run.num_generations, step, task_id, policies)
    advantages, extra = _checked_advantages(algorithm, group)
    stats.update(extra)
    adv_abs += [float(a.abs().mean()) for a in advantages.values()]
    return group, advantages


def _with_step_stats(stats: dict[str, Any], adv_abs: list[float], root: Node) -> dict[str, Any]:
    stats["advantage/abs_mean"] = sum(adv_abs) / len(adv_abs)
    assert root.returns is not None  # filled by compute_tree_returns
    stats["return/root_mean"] = float(root.returns[:, JOINT].mean())
    return stats


def train_on_tasks(
    algorithm: Algorithm,
    trees: Sequence[TaskTree],
    policies: Policies,
    optimizers: dict,
    run: RunConfig,
    modules: ModuleSet | None,
    total_tasks: int,
    reduce: GradReducer = _no_reduce,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """One update on a step of ``total_tasks`` tasks, of which ``trees`` are this rank's (all of them in one
    process): each agent's gradient is accumulated over every node of every tree as the gradient of
    ``sum over tasks of sum over nodes of loss / total_tasks``, summed over the ranks by ``reduce``, then one
    optimiser step per agent and epoch (the modules likewise, before the policies). Returns the step's
    statistics (gradient norms, the same on every rank) and each tree's own (its losses summed over nodes)."""
    step_stats: dict[str, float] = {}
    if modules is not None:
        modules.zero_grad()
    for tree in trees:
        for group in tree.groups:
            module_loss = _module_loss(algorithm, group, modules)
            if module_loss is not None:
                tree.stats.update(module_loss[1])
                modules.backward(module_loss[0] / total_tasks)  # type: ignore[union-attr]
    if modules is not None:
        step_stats.update(modules.finish(reduce))
    pairs = [[(g, a) for g, a in zip(tree.groups, tree.advantages, strict=True)] for tree in trees]
    flat = [pair for task in pairs for pair in task]
    owner = [t for t, task in enumerate(pairs) for _ in task]
    update_stats, per_node = _update(algorithm, policies, optimizers, flat, run, total_tasks, reduce)
    step_stats.update({k: v for k, v in update_stats.items() if k.startswith("grad_norm/")})
    for t, tree in enumerate(trees):
        rows = [row for row, o in zip(per_node, owner, strict=True) if o == t]
        for key in rows[0]:
            if key.startswith("loss/"):
                tree.stats[key] = sum(row[key] for row in rows)
            else:
                tree.stats[key] = rows[-1][key]  # the last node's, as in a one-task step
    return step_stats, [tree.stats for tree in trees]


def mean_stats(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Each key's mean over the rows that have it (numbers only), in first-seen key order."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    out = {}
    for key in keys:
        values = [row[key] for row in rows if isinstance(row.get(key), int | float)]
        if values:
            out[key] = sum(values) / len(values)
    return out


def _module_loss(
    algorithm: Algorithm, group: GroupBatch, modules: ModuleSet | None
) -> tuple[torch.Tensor, dict[str, float]] | None:
    module_loss = algorithm.module_loss(group)
    if module_loss is not None and modules is None:
        raise ValueError(f"{type(algorithm).__name__}.module_loss returned a loss but it declares no modules")
    return module_loss


def _checked_advantages(algorithm: Algorithm, group: GroupBatch) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The algorithm's per-response advantages (per-joint-action ones converted) and its stats, with a shape
    error that names the algorithm and the expected shapes."""
    returned = algorithm.advantages(group)
    advantages, stats = returned if isinstance(returned, tuple) else (returned, {})
    G, J = group.num_generations, len(group.joint_actions)
    name = type(algorithm).__name__
    if set(advantages) != set(group.agents):
        raise ValueError(f"{name}.advantages must return one entry per agent {list(group.agents)}")
    out = {}
    for agent, adv in advantages.items():
        if tuple(adv.shape) == (G,):
            out[agent] = adv
        elif tuple(adv.shape) == (J,):  # per joint action: each response gets its joint actions' sum x G / J
            out[agent] = response_credit(adv, group.joint_actions, group.agents.index(agent), G, "sum") * (G / J)
        else:
            raise ValueError(f"{name}.advantages: {agent!r} has shape {tuple(adv.shape)}, expected ({G},) or ({J},)")
    return out, dict(stats)


def _update(
    algorithm: Algorithm,
    policies: Policies,
    optimizers: dict,
    nodes: Sequence[tuple[GroupBatch, dict[str, torch.Tensor]]],
    run: RunConfig,
    scale: int,
    reduce: GradReducer,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """``update_epochs`` optimiser steps per agent on the gradient of ``sum(node losses) / scale`` over
    ``nodes``, summed over the ranks by ``reduce``. Returns the step's stats (each node's, the last node
    winning, plus gradient norms) and each node's own stats (loss, log-prob, engine gap) of the last epoch."""
    stats: dict[str, float] = {}
    per_node: list[dict[str, float]] = [{} for _ in nodes]
    old: dict[tuple[int, str], torch.Tensor] = {}
    for epoch in range(algorithm.update_epochs):
        for agent, opt in optimizers.items():
            opt.zero_grad(set_to_none=True)
            for n, (group, advantages) in enumerate(nodes):
                loss, extra = _agent_loss(algorithm, policies, agent, group, advantages[agent], old, n, epoch, run)
                (loss / scale).backward()
                stats.update(extra)
                per_node[n].update(extra)
            params = [p for g in opt.param_groups for p in g["params"]]
            reduce(params)
            if run.max_grad_norm is not None:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, run.max_grad_norm)
            else:
                grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            opt.step()
            opt.zero_grad(set_to_none=True)  # free the gradients now: the next agent's update needs the memory
            stats[f"grad_norm/{agent}"] = float(grad_norm)
    return stats, per_node


def _agent_loss(
    algorithm: Algorithm,
    policies: Policies,
    agent: str,
    group: GroupBatch,
    advantages: torch.Tensor,
    old: dict[tuple[int, str], torch.Tensor],
    node: int,
    epoch: int,
    run: RunConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One agent's loss at one node and epoch, and its stats (``old`` keeps the epoch-0 log-probs)."""
    samples = group.samples[agent]
    token_lp = policies.token_logprobs(agent, samples)  # (G, T)
    if epoch == 0:
        old[node, agent] = token_lp.detach()
    reference = policies.token_logprobs(agent, samples, reference=True) if algorithm.reference_kl_coef() else None
    weights, stats = _engine_weights(agent, samples, old[node, agent], run.tis_cap)
    batch = LossInput(agent, samples, token_lp, old[node, agent], reference, advantages, epoch, weights)
    loss, extra = algorithm.loss(batch)
    stats.update(extra)
    stats[f"loss/{agent}"] = float(loss.detach())
    stats[f"logprob/{agent}_mean"] = float(masked_sum(token_lp.detach(), samples.mask).mean())
    return loss, stats


def _engine_weights(
    agent: str, samples: Completions, old: torch.Tensor, cap: float | None
) -> tuple[torch.Tensor | None, dict[str, float]]:
    """For responses an external engine sampled: the mean absolute gap between the trainer's log-probs and
    the engine's (``rollout/logprob_gap_<agent>``) and, with ``cap``, the truncated importance weights
    ``min(exp(old - engine), cap)`` per token (``rollout/tis_weight_<agent>``: their mean)."""
    engine = samples.engine_logprobs
    if engine is None:
        return None, {}
    mask = samples.mask.to(old.dtype)
    count = mask.sum().clamp(min=1)
    gap = old - engine.to(old.dtype)
    stats = {f"rollout/logprob_gap_{agent}": float((gap.abs() * mask).sum() / count)}
    if cap is None:
        return None, stats
    weights = gap.exp().clamp(max=cap) * mask
    stats[f"rollout/tis_weight_{agent}"] = float(weights.sum() / count)
    return weights, stats


def algorithm_card(cls: type[Algorithm]) -> dict[str, str]:
    """``{"name", "display_name", "family", "description", "single_agent_name"}`` of an algorithm class, for
    leaderboard entries."""
    doc = (cls.__doc__ or "").strip().split("\n\n")[0]
    return {
        "name": cls.name,
        "display_name": cls.display_name or cls.__name__,
        "family": cls.family,
        "description": cls.description or " ".join(doc.split()),
        "single_agent_name": cls.single_agent_name or f"Single-agent {cls.display_name or cls.__name__}",
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


def load_algorithm(name: str, cfg: Any = None) -> Algorithm:
    """An instance of the algorithm ``name`` with its own settings ``cfg`` (None: its config class's defaults)."""
    cls = resolve_algorithm(name)
    if cfg is None and cls.config_class is not None:
        cfg = cls.config_class()
    return cls(cfg)
