"""Known-answer tests for the pure MAGRPO math (numbers computed by hand in the comments)."""

import math

import pytest
import torch

from baselines.objectives import (
    NonFiniteLossError,
    TreeNode,
    completion_mask,
    completion_token_logprobs,
    compute_advantages,
    compute_tree_returns,
    joint_actions,
    kl_per_sequence,
    masked_sum,
    policy_loss,
    response_credit,
    should_expand,
)

R = torch.tensor([1.0, 2.0, 3.0, 6.0])  # mean 3, max 6


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("mean", [-2.0, -1.0, 0.0, 3.0]),  # R - 3
        ("rloo", [1 - 11 / 3, 2 - 10 / 3, 3 - 9 / 3, 6 - 6 / 3]),  # R_g - mean(others): others sum = 12 - R_g
        ("max", [-5.0, -4.0, -3.0, 0.0]),  # R - 6
        ("raw", [1.0, 2.0, 3.0, 6.0]),
    ],
)
def test_advantage_modes(mode, expected):
    assert torch.allclose(compute_advantages(R, mode), torch.tensor(expected))


def test_advantage_std_normalisation_is_optional_and_off_by_default():
    std = math.sqrt((4 + 1 + 0 + 9) / 4)  # population std of R = sqrt(3.5)
    out = compute_advantages(R, "mean", normalize_std=True, eps=0.0)
    assert torch.allclose(out, torch.tensor([-2.0, -1.0, 0.0, 3.0]) / std)
    assert torch.allclose(compute_advantages(R, "mean"), torch.tensor([-2.0, -1.0, 0.0, 3.0]))


def test_advantages_per_group_rows():
    returns = torch.tensor([[1.0, 3.0], [10.0, 10.0]])
    assert torch.allclose(compute_advantages(returns, "mean"), torch.tensor([[-1.0, 1.0], [0.0, 0.0]]))


def test_unknown_advantage_mode_is_named():
    with pytest.raises(ValueError, match="advantage_mode"):
        compute_advantages(R, "median")


def test_joint_actions_aligned_and_cross():
    assert joint_actions(2, 3, "aligned") == [(0, 0), (1, 1), (2, 2)]
    assert joint_actions(2, 2, "cross") == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert len(joint_actions(3, 2, "cross")) == 8


def test_aligned_credit_is_identity_and_same_for_every_agent():
    returns = torch.tensor([0.5, 1.5, 2.5])
    acts = joint_actions(2, 3, "aligned")
    for agent in (0, 1):
        assert torch.allclose(response_credit(returns, acts, agent, 3), returns)


def test_cross_credit_hand_computed():
    # joint actions (a0, a1): (0,0)=1, (0,1)=2, (1,0)=3, (1,1)=6
    acts = joint_actions(2, 2, "cross")
    returns = torch.tensor([1.0, 2.0, 3.0, 6.0])
    # agent 0: response 0 in (0,0),(0,1): sum 3 mean 1.5; response 1 in (1,0),(1,1): sum 9 mean 4.5
    assert torch.allclose(response_credit(returns, acts, 0, 2, "sum"), torch.tensor([3.0, 9.0]))
    assert torch.allclose(response_credit(returns, acts, 0, 2, "mean"), torch.tensor([1.5, 4.5]))
    # agent 1: response 0 in (0,0),(1,0): sum 4 mean 2; response 1 in (0,1),(1,1): sum 8 mean 4
    assert torch.allclose(response_credit(returns, acts, 1, 2, "sum"), torch.tensor([4.0, 8.0]))
    credit = response_credit(returns, acts, 1, 2, "mean")
    assert torch.allclose(compute_advantages(credit, "mean"), torch.tensor([-1.0, 1.0]))


def test_tree_returns_with_discount_hand_built():
    # root: 2 joint actions with immediate rewards 1 and 0; child of j=0 has rewards [2, 4] (leaves);
    # child of j=1 has rewards [0, 1], and its j=1 has a grandchild with rewards [3, 5].
    grandchild = TreeNode(torch.tensor([[3.0], [5.0]]), [None, None])
    child1 = TreeNode(torch.tensor([[0.0], [1.0]]), [None, grandchild])
    child0 = TreeNode(torch.tensor([[2.0], [4.0]]), [None, None])
    root = TreeNode(torch.tensor([[1.0], [0.0]]), [child0, child1])
    out = compute_tree_returns(root, gamma=0.5)
    # grandchild returns [3, 5], mean 4 -> child1 returns [0, 1 + 0.5*4] = [0, 3], mean 1.5
    # child0 returns [2, 4], mean 3 -> root returns [1 + 0.5*3, 0 + 0.5*1.5] = [2.5, 0.75]
    assert torch.allclose(child1.returns, torch.tensor([[0.0], [3.0]]))
    assert torch.allclose(out, torch.tensor([[2.5], [0.75]]))
    assert torch.allclose(grandchild.returns, torch.tensor([[3.0], [5.0]]))


def test_tree_returns_per_agent_channels():
    child = TreeNode(torch.tensor([[1.0, 0.0], [3.0, 2.0]]), [None, None])  # means [2, 1]
    root = TreeNode(torch.tensor([[0.0, 1.0], [1.0, 1.0]]), [child, None])
    out = compute_tree_returns(root, gamma=0.9)
    assert torch.allclose(out, torch.tensor([[1.8, 1.9], [1.0, 1.0]]))


def test_early_termination_off_by_default():
    assert should_expand(torch.tensor([3.0, 3.0]), None)
    assert not should_expand(torch.tensor([1.0, 2.0]), 1.2)  # mean 1.5 > 1.2: stop
    assert should_expand(torch.tensor([1.0, 1.0]), 1.2)


EOS, PAD = 9, 9  # pad == eos, the hard case


def test_mask_includes_first_eos_and_excludes_pads():
    completion = torch.tensor(
        [
            [5, 6, EOS, PAD, PAD],  # ends early: 3 tokens scored
            [5, 6, 7, 8, EOS],  # longest row: its final EOS is scored
            [5, 6, 7, 8, 7],  # cut at the budget: all scored
            [EOS, PAD, PAD, PAD, PAD],  # empty answer: the EOS alone is scored
        ]
    )
    mask = completion_mask(completion, [EOS])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_mask_with_several_eos_ids_and_distinct_pad():
    completion = torch.tensor([[1, 4, 0, 0], [4, 2, 3, 0]])  # eos ids {2, 3}, pad 0
    assert torch.equal(
        completion_mask(completion, [2, 3]), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    )


def test_completion_logprobs_use_prompt_width_even_when_prompt_contains_pad_id():
    # vocabulary of 3; prompt width P = 3 (row 0 left-padded, row 1's prompt contains the pad id 0)
    sequences = torch.tensor([[0, 1, 2, 1, 0], [2, 0, 1, 2, 2]])  # (B=2, L=5), T = 2
    logits = torch.zeros(2, 5, 3)
    logits[:, 2, :] = torch.tensor([0.0, math.log(3.0), 0.0])  # position 2 predicts token at 3
    logits[:, 3, :] = torch.tensor([math.log(2.0), 0.0, 0.0])  # position 3 predicts token at 4
    lp = completion_token_logprobs(logits, sequences, prompt_width=3)
    # row 0: token 1 with probs [1,3,1]/5 -> log(3/5); token 0 with probs [2,1,1]/4 -> log(1/2)
    # row 1: token 2 -> log(1/5); token 2 -> log(1/4)
    expected = torch.tensor([[math.log(0.6), math.log(0.5)], [math.log(0.2), math.log(0.25)]])
    assert torch.allclose(lp, expected, atol=1e-6)
    # logits of only the last T+1 positions give the same answer
    assert torch.allclose(completion_token_logprobs(logits[:, 2:], sequences, 3), expected, atol=1e-6)
    mask = torch.tensor([[1, 0], [1, 1]], dtype=torch.bool)
    assert torch.allclose(masked_sum(lp, mask), torch.tensor([math.log(0.6), math.log(0.05)]), atol=1e-6)


def test_policy_loss_is_negative_mean_of_advantage_times_summed_logprob():
    logp = torch.tensor([-2.0, -4.0, -1.0, -3.0], requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    loss = policy_loss(logp, adv)
    # -(1/4) * (-2 + 4 - 0.5 + 1.5) = -0.75
    assert math.isclose(loss.item(), -0.75)
    loss.backward()
    assert torch.allclose(logp.grad, -adv / 4)


def test_policy_loss_with_kl():
    logp = torch.tensor([-1.0, -1.0])
    kl = kl_per_sequence(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.0, -1.0]]), torch.tensor([[1, 1]]))
    # token 2: diff = 1 -> e - 1 - 1 = e - 2
    assert torch.allclose(kl, torch.tensor([math.e - 2]))
    loss = policy_loss(logp, torch.tensor([1.0, -1.0]), kl=torch.tensor([0.2, 0.4]), kl_coef=0.5)
    assert math.isclose(float(loss), 0.5 * 0.3, rel_tol=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_raises(bad):
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        policy_loss(torch.tensor([bad, -1.0]), torch.tensor([1.0, -1.0]))
