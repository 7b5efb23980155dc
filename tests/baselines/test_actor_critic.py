"""Actor-critic baselines on the plug-in interface (IAC, MAAC): known-answer advantages and value targets,
per-joint-action advantages, algorithm state and modules in checkpoints, kill-and-resume identical."""

from __future__ import annotations

import pytest
import torch
from run_helpers import ctrl_c_at_step, metric_rows
from toy_env import make_toy_env

from baselines.algorithm import GroupBatch, PolicyInfo, resolve_algorithm
from baselines.config import RunConfig
from baselines.iac import IAC, IACConfig
from baselines.lm.completions import Completions
from baselines.maac import MAAC, MAACConfig
from baselines.magrpo import MAGRPO, MAGRPOConfig
from baselines.training import RunDirError, TrainingInterrupted, train

H = 2  # width of the stub representation


class StubPolicies:
    """Representations chosen by the test: prompt features (G, H) and response features (G, H) per agent."""

    def __init__(self, features: dict[str, tuple[list[list[float]], list[list[float]]]]) -> None:
        self.features = {a: (torch.tensor(p), torch.tensor(r)) for a, (p, r) in features.items()}

    def representation(self, agent, completions, grad=False):
        return self.features[agent]


def group(joint, own, actions=None, policies=None, agents=("first", "second")) -> GroupBatch:
    G = len(own)
    empty = Completions(
        torch.zeros(G, 2, dtype=torch.long), torch.ones(G, 1), torch.ones(G, 1, dtype=torch.bool), [""] * G
    )
    j = torch.tensor(joint, dtype=torch.float64)
    o = torch.tensor(own, dtype=torch.float64)
    actions = actions or tuple((g,) * len(agents) for g in range(G))
    return GroupBatch(agents, {a: empty for a in agents}, tuple(actions), j, j, o, o, G, 1, 0, policies=policies)


def set_linear_head(head, weight: list[float], bias: float) -> None:
    """Make a two-layer head compute ``weight . x + bias`` for small x (tanh layer as near-identity)."""
    with torch.no_grad():
        first, last = head.net[0], head.net[2]
        first.weight.zero_()
        first.bias.zero_()
        last.weight.zero_()
        for k, w in enumerate(weight):
            first.weight[k, k] = 1.0
            last.weight[0, k] = w
        last.bias.fill_(bias)


def test_iac_advantage_is_the_return_minus_each_agents_own_value():
    """V_first(s) = tanh(0.5) * 2 + 1, V_second(s) = 0.5; own returns (3, 1) and (0, 2): A = R - V."""
    stub = StubPolicies({"first": ([[0.5, 0.0]] * 2, [[0.0, 0.0]] * 2), "second": ([[0.0, 0.0]] * 2, [[0.0, 0.0]] * 2)})
    algo = IAC(IACConfig(critic_hidden=H))
    algo.trainable_modules(PolicyInfo(("first", "second"), {"first": H, "second": H}, "cpu"))
    set_linear_head(algo.heads["first"], [2.0, 0.0], 1.0)
    set_linear_head(algo.heads["second"], [0.0, 0.0], 0.5)
    g = group([1.0, 2.0], [[3.0, 0.0], [1.0, 2.0]], policies=stub)
    adv, stats = algo.advantages(g)
    v_first = 2 * torch.tanh(torch.tensor(0.5)).item() + 1
    assert torch.allclose(adv["first"], torch.tensor([3 - v_first, 1 - v_first], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(adv["second"], torch.tensor([-0.5, 1.5], dtype=torch.float64))
    assert stats["critic/second_value"] == pytest.approx(0.5)
    loss, _ = algo.module_loss(g)  # mean over agents of the mean squared error to the own returns
    expected = ((3 - v_first) ** 2 + (1 - v_first) ** 2) / 4 + (0.5**2 + 1.5**2) / 4
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    joint = IAC(IACConfig(reward="joint", critic_hidden=H))
    joint.heads = algo.heads
    assert torch.allclose(joint.advantages(g)[0]["second"], torch.tensor([0.5, 1.5], dtype=torch.float64))


def test_maac_critic_sees_every_agents_prompt_and_response_and_gives_one_advantage_per_joint_action():
    """Cross joint actions of G = 2: Q(s, a) = 3 * tanh(second agent's response feature); V = mean Q."""
    stub = StubPolicies(
        {"first": ([[0.0, 0.0]] * 2, [[0.0, 0.0]] * 2), "second": ([[0.0, 0.0]] * 2, [[0.1, 0.0], [0.3, 0.0]])}
    )
    algo = MAAC(MAACConfig(critic_hidden=4 * H))
    algo.trainable_modules(PolicyInfo(("first", "second"), {"first": H, "second": H}, "cpu"))
    weight = [0.0] * (4 * H)
    weight[3 * H] = 3.0  # the first feature of the second agent's response
    set_linear_head(algo.critic, weight, 0.0)
    actions = ((0, 0), (0, 1), (1, 0), (1, 1))
    g = group([1.0, 2.0, 3.0, 4.0], [[0.0, 0.0]] * 2, actions, stub)
    q = 3 * torch.tanh(torch.tensor([0.1, 0.3, 0.1, 0.3], dtype=torch.float64))
    adv, stats = algo.advantages(g)
    assert adv["first"].shape == (4,) and torch.equal(adv["first"], adv["second"])
    assert torch.allclose(adv["first"], torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64) - q.mean(), atol=1e-6)
    assert stats["critic/value"] == pytest.approx(float(q.mean()), rel=1e-5)
    loss, _ = algo.module_loss(g)
    assert float(loss) == pytest.approx(float(((q - torch.tensor([1.0, 2.0, 3.0, 4.0])) ** 2).mean()), rel=1e-5)
    critic = MAAC(MAACConfig(advantage="critic", critic_hidden=4 * H))
    critic.critic = algo.critic
    assert torch.allclose(critic.advantages(g)[0]["first"], q - q.mean(), atol=1e-6)


def test_per_joint_action_advantages_weight_each_response_by_its_joint_actions():
    from baselines.algorithm import _checked_advantages

    class PerJoint(MAGRPO):
        def advantages(self, group):
            return {a: torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64) for a in group.agents}

    g = group([0.0] * 4, [[0.0, 0.0]] * 2, ((0, 0), (0, 1), (1, 0), (1, 1)))
    out, _ = _checked_advantages(PerJoint(MAGRPOConfig()), g)
    # first's response 0 is in joint actions 0 and 1: (1 + 2) * G / J = 1.5; second's response 0 in 0 and 2: 2.0
    assert torch.allclose(out["first"], torch.tensor([1.5, 3.5], dtype=torch.float64))
    assert torch.allclose(out["second"], torch.tensor([2.0, 3.0], dtype=torch.float64))


def small_run(**kw) -> RunConfig:
    base = dict(num_generations=3, max_new_tokens=8, eval_tasks=1, eval_seeds=1, eval_every=0, save_every=1, lr=1e-3)
    return RunConfig(**{**base, **kw})


@pytest.mark.parametrize("name", ["iac", "maac"])
def test_actor_critics_train_and_resume_identically_after_a_kill(name, tmp_path, monkeypatch):
    cls = resolve_algorithm(name)
    whole = tmp_path / "whole"
    train(small_run(steps=3, output_dir=whole), cls(cls.config_class()), False, make_toy_env)
    metrics = metric_rows(whole / "metrics.jsonl")
    assert all("critic/loss" in r and f"grad_norm/critic{'_first' if name == 'iac' else ''}" in r for r in metrics)
    state = torch.load(whole / "checkpoint.pt", weights_only=False)
    assert state["algorithm"]["modules"]["modules"], "the critic's weights are in the checkpoint"
    cut = tmp_path / "cut"
    with ctrl_c_at_step(monkeypatch, 1), pytest.raises(TrainingInterrupted):
        train(small_run(steps=3, output_dir=cut), cls(cls.config_class()), False, make_toy_env)
    train(small_run(steps=3, output_dir=cut, resume=True), cls(cls.config_class()), False, make_toy_env)
    assert metric_rows(cut / "metrics.jsonl") == metrics
    ours = torch.load(cut / "checkpoint.pt", weights_only=False)["algorithm"]["modules"]["modules"]
    for module, weights in state["algorithm"]["modules"]["modules"].items():
        assert all(torch.equal(w, ours[module][k]) for k, w in weights.items()), module


def test_resuming_a_critic_from_a_checkpoint_without_its_state_is_an_error(tmp_path):
    out = tmp_path / "r"
    train(small_run(steps=1, output_dir=out), IAC(IACConfig()), False, make_toy_env)
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    del state["algorithm"]
    torch.save(state, out / "checkpoint.pt")
    with pytest.raises(RunDirError, match="holds no state of IAC"):
        train(small_run(steps=2, output_dir=out, resume=True), IAC(IACConfig()), False, make_toy_env)


def test_an_algorithm_sees_the_step_task_infos_prompt_ids_and_a_differentiable_representation():
    from baselines.algorithm import train_step
    from baselines.training import build_policies

    seen = []

    class Looking(MAGRPO):
        def advantages(self, group):
            prompt, response = group.representation("first", grad=True)
            own = group.policies.parameters("first")
            grads = torch.autograd.grad(response.sum(), own, allow_unused=True)  # before any update
            seen.append((group, prompt, response, grads))
            return super().advantages(group)

    run = small_run(finetune="lora", lora_r=4)
    env = make_toy_env()
    policies = build_policies(run, env.possible_agents)
    opts = {a: torch.optim.AdamW(policies.parameters(a), lr=1e-3) for a in env.possible_agents}
    obs, _ = env.reset(options={"task_id": "train-4"})
    train_step(Looking(MAGRPOConfig()), env, obs, policies, opts, run, None, 7, "train-4")
    group, prompt, response, own = seen[0]
    assert (group.step, group.task_id) == (7, "train-4")
    assert [info["first"]["joint_reward"] for info in group.infos] == group.joint_rewards.tolist()
    ids, mask = group.prompt_ids("second")
    assert torch.equal(ids, group.samples["second"].sequences[:, : ids.shape[1]]) and bool(mask.all())
    assert prompt.shape == response.shape == (3, policies.hidden_size("first"))
    assert any(g is not None and bool(g.abs().sum() > 0) for g in own), "the gradient reaches the agent's adapter"
