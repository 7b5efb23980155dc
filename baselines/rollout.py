"""Rollouts shared by every algorithm: tree rollouts on env branches and the statistics of a training step.

A rollout starts from an env that was just reset on one task. At each node every agent samples G responses
(one batched `generate` per tree level: every open node's prompts, all agents); the node's joint actions
(`aligned` or `cross`) are each stepped on an exact clone of the node's env; in a multi-turn env each
joint action that did not end the episode spawns a child node whose prompts are the observations that
clone returned.
Every node records both reward channels from the env's infos, whatever the env's `reward_mode`: a (J, 1 + n)
tensor whose column 0 is the joint reward and column 1 + i agent i's own (individual) reward. Tree returns
are computed on every column; the algorithm alone picks which channel trains which agent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from baselines.lm.policies import ChatPrompt, Completions, Policies, Prompt, SamplingConfig
from baselines.objectives import TreeNode, joint_actions, should_expand

JOINT = 0
"""Column of the joint reward in a node's (J, 1 + n) rewards and returns; agent i's own is column 1 + i."""


@dataclass
class Node(TreeNode):
    """A tree node plus what the update needs: each agent's completions and the node's joint actions."""

    completions: dict[str, Completions] = field(default_factory=dict)
    actions: list[tuple[int, ...]] = field(default_factory=list)
    infos: list[dict[str, dict[str, Any]]] = field(default_factory=list)  # per joint action: the env's infos
    turn: int = 1

    @property
    def joint_rewards(self) -> torch.Tensor:  # (J,)
        return self.rewards[:, JOINT]


class Sampler(Protocol):
    """What rollouts sample from: :class:`~baselines.lm.policies.Policies` itself (the in-process backend) or
    an engine such as :class:`baselines.lm.vllm_rollout.VLLMSampler`. ``generate`` returns, per agent, the
    ``repeats`` responses to each of its prompts (rows prompt-major) as Completions the policies can score."""

    def generate(
        self, prompts: Mapping[str, Sequence[Prompt]], sampling: SamplingConfig, repeats: int = 1
    ) -> dict[str, Completions]: ...


@dataclass
class RolloutSettings:
    """The rollout part of an algorithm config."""

    num_generations: int
    joint_mode: str
    max_turns: int
    early_termination: float | None
    sampling: SamplingConfig


def env_prompt(env, obs: dict[str, dict], agent: str) -> ChatPrompt:
    """``agent``'s prompt at ``env``'s current state in both forms: the observation's text and the env's chat
    messages (``env.chat_messages``, which every llm_coop_envs env has; another env's prompt becomes one
    user message), with the env's answer start (``env.answer_start_of``). The policy picks the form its
    tokenizer needs."""
    text = obs[agent]["prompt"]
    chat = getattr(env, "chat_messages", None)
    if not callable(chat):
        return ChatPrompt(text, ({"role": "user", "content": text},))
    start = getattr(env, "answer_start_of", None)
    return ChatPrompt(text, tuple(chat(agent)), start(agent) if callable(start) else "")


def rollout_tree(
    env, obs: dict[str, dict], policies: Policies, rs: RolloutSettings, sampler: Sampler | None = None
) -> Node:
    """The rollout tree from `env` (whose current observations are `obs`), expanded level by level: at each
    turn the prompts of every open node are sampled in ONE `generate` call (nodes x G samples per agent) of
    ``sampler`` (default: the policies themselves)."""
    sampler = sampler or policies
    G = rs.num_generations
    frontier: list[tuple[Any, dict, Node | None, int]] = [(env, obs, None, 0)]  # env, obs, parent, slot
    root: Node | None = None
    turn = 1
    while frontier:
        agents = list(frontier[0][0].agents)
        prompts = {a: [env_prompt(e, o, a) for e, o, _, _ in frontier] for a in agents}
        sampled = sampler.generate(prompts, rs.sampling, repeats=G)
        opened: list[tuple[Any, dict, Node | None, int]] = []
        for i, (node_env, _, parent, slot) in enumerate(frontier):
            own = sampled if len(frontier) == 1 else {a: sampled[a].rows(i * G, (i + 1) * G) for a in agents}
            node, branches = _expand(node_env, own, rs, turn)
            if parent is None:
                root = node
            else:
                parent.children[slot] = node
            if turn < rs.max_turns and should_expand(node.joint_rewards, rs.early_termination):
                opened += [(b[0], b[1], node, j) for j, b in enumerate(branches) if b is not None]
        frontier, turn = opened, turn + 1
    assert root is not None
    return root


def _expand(env, completions: dict[str, Completions], rs: RolloutSettings, turn: int) -> tuple[Node, list]:
    """One node: its joint actions (`aligned` or `cross`) each stepped on an exact clone of `env`; returns
    the node (children not yet filled) and, per joint action, (clone, observations) or None if it ended."""
    agents = list(completions)
    actions = joint_actions(len(agents), rs.num_generations, rs.joint_mode)  # type: ignore[arg-type]
    rewards, branches, all_infos = [], [], []
    for action in actions:
        branch = env.clone()
        next_obs, _, term, trunc, infos = branch.step(
            {a: completions[a].texts[action[i]] for i, a in enumerate(agents)}
        )
        joint = float(infos[agents[0]]["joint_reward"])
        rewards.append([joint, *(float(infos[a]["individual_reward"]) for a in agents)])
        all_infos.append(infos)
        done = all(term.values()) or all(trunc.values())
        branches.append(None if done else (branch, next_obs))
    reward_t = torch.tensor(rewards, dtype=torch.float64)  # (J, 1 + n): joint, then each agent's own
    node = Node(rewards=reward_t, completions=completions, actions=actions, infos=all_infos, turn=turn)
    node.children = [None] * len(actions)
    return node, branches


def walk(node: Node) -> list[Node]:
    """All nodes of a tree, root first (breadth-first)."""
    out: list[Node] = []
    frontier = [node]
    while frontier:
        out.extend(frontier)
        frontier = [c for n in frontier for c in n.children if isinstance(c, Node)]
    return out


def node_stats(root: Node, nodes: list[Node]) -> dict[str, Any]:
    """Reward and response statistics of one training step (root = the first turn)."""
    stats: dict[str, Any] = {
        "reward/joint_mean": float(root.joint_rewards.mean()),
        "reward/joint_max": float(root.joint_rewards.max()),
        "reward/joint_std": float(root.joint_rewards.std(unbiased=False)),
        "tree/nodes": len(nodes),
    }
    for i, agent in enumerate(root.completions):
        stats[f"reward/{agent}_individual_mean"] = float(root.rewards[:, JOINT + 1 + i].mean())
    for agent, c in root.completions.items():
        stats[f"completion/{agent}_tokens_mean"] = float(c.mask.sum(dim=1).float().mean())
        stats[f"completion/{agent}_chars_mean"] = sum(len(t) for t in c.texts) / len(c.texts)
    for turn in sorted({n.turn for n in nodes}):
        prefix = "breakdown/" if turn == 1 else f"breakdown/turn{turn}/"
        level = [info for n in nodes if n.turn == turn for info in n.infos]
        stats.update({f"{prefix}{k}_mean": v for k, v in breakdown_means(level).items()})
    return stats


def breakdown_means(infos: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, float]:
    """Mean over joint actions of every number or flag in the env's ``infos[agent]["breakdown"]`` (the score's
    parts, the same dict for every agent; e.g. coding's ``calls_aux``, ``cooperation``, ``tests``)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for info in infos:
        first = next(iter(info.values()), {})
        for key, value in first.get("breakdown", {}).items():
            if isinstance(value, bool | int | float):
                sums[key] = sums.get(key, 0.0) + float(value)
                counts[key] = counts.get(key, 0) + 1
    return {key: sums[key] / counts[key] for key in sums}
