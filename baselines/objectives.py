"""The pure math of MAGRPO and its variants: joint actions, credit, tree returns, advantages, masks, losses.

Every function here is a plain function of tensors or lists (no model, no env), tested with hand-computed
numbers in `tests/baselines/test_objectives.py`. Shapes: G = generations per agent, n = agents,
J = joint actions of one node (G aligned, G**n cross), K = reward channels (1 for the joint reward, n for
independent per-agent rewards), B = rows of a batch, T = generated tokens, P = padded prompt width.

Deliberate differences from the reference code (docs/method.md, section 9):
- the mask covers exactly the generated tokens up to and including the first EOS: the EOS of the longest
  row is scored, and pads after EOS are never scored, even when pad == EOS;
- the prompt width P is the width of the (left-padded) prompt tensor given to `generate`, never found by
  searching for the pad id (prompts may contain that id);
- a NaN or inf loss raises `NonFiniteLossError` instead of being replaced by a constant;
- std normalisation of advantages is off by default (on, every baseline mode gives the same advantages);
- early termination of tree expansion is off by default (`threshold=None`).
- cross joint actions: by default an agent's response gets the MEAN return of the joint actions it appears
  in (`cross_credit="mean"`); the reference uses the SUM, which is the mean times G**(n-1) and so scales
  the advantages (and the effective learning rate) with G. `cross_credit="sum"` reproduces it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

AdvantageMode = Literal["mean", "rloo", "max", "raw"]
JointMode = Literal["aligned", "cross"]
CrossCredit = Literal["mean", "sum"]


class NonFiniteLossError(RuntimeError):
    """Raised when a loss is NaN or infinite: training stops rather than silently skipping the update."""


# --------------------------------------------------------------------------- joint actions and credit
def joint_actions(n_agents: int, num_generations: int, mode: JointMode) -> list[tuple[int, ...]]:
    """Indices (one response index per agent) of each joint action of a node.

    aligned: [(0,0,..), (1,1,..), ...] (G joint actions); cross: the Cartesian product (G**n)."""
    if mode == "aligned":
        return [(g,) * n_agents for g in range(num_generations)]
    if mode == "cross":
        return list(itertools.product(range(num_generations), repeat=n_agents))
    raise ValueError(f"joint_mode must be 'aligned' or 'cross', got {mode!r}")


def response_credit(
    joint_returns: torch.Tensor,  # (J,) returns of the node's joint actions
    actions: Sequence[tuple[int, ...]],
    agent: int,
    num_generations: int,
    cross_credit: CrossCredit = "mean",
) -> torch.Tensor:  # (G,)
    """Return credited to each of `agent`'s G responses: the mean (or sum) of the returns of every joint
    action that contains it. With aligned joint actions this is the joint return itself."""
    index = torch.tensor([a[agent] for a in actions])  # (J,)
    total = torch.zeros(num_generations, dtype=joint_returns.dtype).index_add_(0, index, joint_returns)
    if cross_credit == "sum":
        return total
    if cross_credit == "mean":
        count = torch.bincount(index, minlength=num_generations).to(joint_returns.dtype)
        return total / count
    raise ValueError(f"cross_credit must be 'mean' or 'sum', got {cross_credit!r}")


# --------------------------------------------------------------------------- advantages
def compute_advantages(
    returns: torch.Tensor,  # (..., G) one group per last-dim row
    mode: AdvantageMode = "mean",
    normalize_std: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:  # (..., G)
    """Group-relative advantages. mean: R - mean(R) (MAGRPO); rloo: R_g - mean of the other G-1;
    max: R - max(R) (ReMax-style); raw: R (multi-agent REINFORCE). With `normalize_std`, divide by the
    group's population std + eps (off by default, as in the paper)."""
    G = returns.shape[-1]
    if mode == "mean":
        adv = returns - returns.mean(dim=-1, keepdim=True)
    elif mode == "rloo":
        if G < 2:
            raise ValueError("advantage mode 'rloo' needs num_generations >= 2")
        adv = (returns - returns.mean(dim=-1, keepdim=True)) * G / (G - 1)
    elif mode == "max":
        adv = returns - returns.max(dim=-1, keepdim=True).values
    elif mode == "raw":
        adv = returns.clone()
    else:
        raise ValueError(f"advantage_mode must be one of mean, rloo, max, raw; got {mode!r}")
    if normalize_std:
        adv = adv / (returns.std(dim=-1, unbiased=False, keepdim=True) + eps)
    return adv


# --------------------------------------------------------------------------- tree returns
@dataclass
class TreeNode:
    """One node of a multi-turn rollout tree: immediate rewards of its J joint actions and, per joint
    action, the child node it spawned (None at a leaf or where expansion stopped)."""

    rewards: torch.Tensor  # (J, K) immediate rewards
    children: list[TreeNode | None] = field(default_factory=list)
    returns: torch.Tensor | None = None  # (J, K), filled by compute_tree_returns


def compute_tree_returns(node: TreeNode, gamma: float) -> torch.Tensor:  # (J, K)
    """R_j = r_j + gamma * mean over child j's joint actions of their returns; R_j = r_j at a leaf.
    Fills `returns` on every node of the tree and returns the root's."""
    returns = node.rewards.clone()
    for j, child in enumerate(node.children):
        if child is not None:
            returns[j] = returns[j] + gamma * compute_tree_returns(child, gamma).mean(dim=0)
    node.returns = returns
    return returns


def should_expand(rewards: torch.Tensor, threshold: float | None) -> bool:
    """Early termination: stop expanding a node's children when its mean immediate reward exceeds the
    threshold. `None` (the default) never stops."""
    return threshold is None or float(rewards.mean()) <= threshold


# --------------------------------------------------------------------------- masks and log-probs
def completion_mask(completion_ids: torch.Tensor, eos_ids: Sequence[int]) -> torch.Tensor:  # (B, T) bool
    """True on the generated tokens up to and including the first EOS of each row; False after it (pads,
    or anything else). A row with no EOS (cut at the token budget) is True everywhere."""
    is_eos = torch.isin(completion_ids, torch.tensor(list(eos_ids), dtype=completion_ids.dtype))  # (B, T)
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()  # (B, T) EOS strictly before t
    return eos_before == 0


def completion_token_logprobs(
    logits: torch.Tensor,  # (B, L, V) logits of the full sequence (prompt + completion), L = P + T
    sequences: torch.Tensor,  # (B, L) token ids
    prompt_width: int,  # P, the width of the left-padded prompt tensor
) -> torch.Tensor:  # (B, T)
    """log pi(token_t | prefix) for every completion position; logits at position P-1+t predict token P+t.
    `logits` may also hold only the last T+1 positions (as returned with `logits_to_keep=T+1`)."""
    T = sequences.shape[1] - prompt_width
    if T <= 0:
        raise ValueError("no completion tokens: sequences are not longer than the prompt width")
    step_logits = logits[:, -(T + 1) : -1, :]  # (B, T, V)
    targets = sequences[:, prompt_width:]  # (B, T)
    logp = torch.log_softmax(step_logits.float(), dim=-1)  # (B, T, V)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, T), (B, T) -> (B,)
    """Sum over tokens where mask is True (the summed-token log-prob of a response)."""
    return (values * mask.to(values.dtype)).sum(dim=1)


def kl_per_sequence(
    token_logprobs: torch.Tensor,  # (B, T) current policy
    ref_token_logprobs: torch.Tensor,  # (B, T) reference policy
    mask: torch.Tensor,  # (B, T)
) -> torch.Tensor:  # (B,)
    """Summed per-token KL estimate k3 = exp(ref - cur) - (ref - cur) - 1 (non-negative, unbiased)."""
    diff = ref_token_logprobs - token_logprobs
    return masked_sum(torch.exp(diff) - diff - 1.0, mask)


def policy_loss(
    seq_logprobs: torch.Tensor,  # (G,) summed log-probs of an agent's G responses
    advantages: torch.Tensor,  # (G,)
    kl: torch.Tensor | None = None,  # (G,) summed KL to the reference, or None
    kl_coef: float = 0.0,
) -> torch.Tensor:  # scalar
    """-(1/G) * sum_g A_g * log pi(response_g | prompt)  [+ kl_coef * mean_g KL_g]. Raises
    NonFiniteLossError on NaN/inf."""
    if seq_logprobs.shape != advantages.shape:
        raise ValueError(
            f"shape mismatch: logprobs {tuple(seq_logprobs.shape)} vs advantages {tuple(advantages.shape)}"
        )
    loss = -(advantages.detach().to(seq_logprobs.dtype) * seq_logprobs).mean()
    if kl is not None and kl_coef != 0.0:
        loss = loss + kl_coef * kl.mean()
    if not torch.isfinite(loss):
        raise NonFiniteLossError(
            f"non-finite loss {float(loss)} (logprobs finite: {bool(torch.isfinite(seq_logprobs).all())}, "
            f"advantages finite: {bool(torch.isfinite(advantages).all())}); stopping instead of skipping the update"
        )
    return loss
