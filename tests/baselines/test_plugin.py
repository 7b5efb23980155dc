"""The plug-in algorithm interface: registry, the built-ins' advantages, a user algorithm trained by the runner."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from toy_env import make_toy_env

from baselines import algorithm as algorithm_module
from baselines.algorithm import Algorithm, GroupBatch, algorithm_card, load_algorithm, resolve_algorithm, train_step
from baselines.config import RunConfig
from baselines.independent import IndependentGRPO
from baselines.lm.completions import Completions
from baselines.magrpo import MAGRPO, MAGRPOConfig
from baselines.training import build_policies, train


def small_run(**kw) -> RunConfig:
    base = dict(num_generations=3, max_new_tokens=10, eval_tasks=1, eval_seeds=1, eval_every=0, save_every=1)
    return RunConfig(**{**base, **kw})


def test_builtins_resolve_to_their_classes_with_their_cards():
    assert resolve_algorithm("magrpo") is MAGRPO and resolve_algorithm("independent") is IndependentGRPO
    assert algorithm_card(MAGRPO)["family"] == "joint-reward"
    assert algorithm_card(IndependentGRPO)["display_name"] == "Independent GRPO"
    assert MAGRPO.config_class is MAGRPOConfig and IndependentGRPO.config_class is MAGRPOConfig


def test_import_paths_resolve():
    from examples.ppo_clip_algorithm import MultiAgentPPOClip, PPOClipConfig

    assert resolve_algorithm("examples.ppo_clip_algorithm:MultiAgentPPOClip") is MultiAgentPPOClip
    assert MultiAgentPPOClip.config_class is PPOClipConfig
    assert isinstance(load_algorithm("examples.ppo_clip_algorithm:MultiAgentPPOClip").cfg, PPOClipConfig)


def test_entry_point_group_is_searched(monkeypatch):
    fake = SimpleNamespace(name="my_ppo", value="examples.ppo_clip_algorithm:MultiAgentPPOClip")
    monkeypatch.setattr(algorithm_module.metadata, "entry_points", lambda group: [fake] if group else [])
    assert resolve_algorithm("my_ppo").name == "ppo_clip"
    assert "my_ppo" in algorithm_module.available_algorithms()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nope", "unknown"),
        ("no_such_module_xyz:Algo", "cannot import"),
        ("baselines.magrpo:MAGRPOConfig", "not a subclass"),
    ],
)
def test_bad_algorithm_names_are_explained(name, message):
    with pytest.raises(ValueError, match=message):
        resolve_algorithm(name)


def hand_group(joint: list[float], own: list[list[float]], agents=("first", "second")) -> GroupBatch:
    """An aligned single-turn group: ``joint[g]`` the joint return, ``own[g][i]`` agent i's own return."""
    G = len(joint)
    empty = Completions(
        torch.zeros(G, 2, dtype=torch.long), torch.ones(G, 1), torch.ones(G, 1, dtype=torch.bool), [""] * G
    )
    j = torch.tensor(joint, dtype=torch.float64)  # (G,)
    o = torch.tensor(own, dtype=torch.float64)  # (G, n)
    actions = tuple((g,) * len(agents) for g in range(G))
    return GroupBatch(agents, {a: empty for a in agents}, actions, j, j, o, o, G, 1, 0)


def test_magrpo_and_independent_grpo_differ_exactly_by_the_reward_channel():
    """The method difference, by hand: joint returns (1, 2, 6); own returns first (3, 0, 0), second (0, 1, 5).
    MAGRPO: every agent gets R - mean(R) = (-2, -1, 3). Independent: first (2, -1, -1), second (-2, -1, 3)."""
    group = hand_group([1.0, 2.0, 6.0], [[3.0, 0.0], [0.0, 1.0], [0.0, 5.0]])
    joint = MAGRPO(MAGRPOConfig()).advantages(group)
    own = IndependentGRPO(MAGRPOConfig()).advantages(group)
    expected = {
        "magrpo": {"first": [-2.0, -1.0, 3.0], "second": [-2.0, -1.0, 3.0]},
        "independent": {"first": [2.0, -1.0, -1.0], "second": [-2.0, -1.0, 3.0]},
    }
    for name, got in (("magrpo", joint), ("independent", own)):
        for agent, values in expected[name].items():
            assert torch.allclose(got[agent], torch.tensor(values, dtype=torch.float64)), (name, agent)


def test_the_example_computes_leave_one_out_advantages():
    from examples.ppo_clip_algorithm import MultiAgentPPOClip, PPOClipConfig

    group = hand_group([1.0, 2.0, 6.0], [[0.0, 0.0]] * 3)
    loo = MultiAgentPPOClip(PPOClipConfig()).advantages(group)["first"]  # R_g - mean of the other two
    assert torch.allclose(loo, torch.tensor([1 - 4.0, 2 - 3.5, 6 - 1.5], dtype=torch.float64))


def test_group_baselines_refuse_one_generation():
    with pytest.raises(ValueError, match="num_generations"):
        MAGRPO(MAGRPOConfig()).check_run(small_run(num_generations=1))
    with pytest.raises(ValueError, match="num_generations"):
        IndependentGRPO(MAGRPOConfig(advantage_mode="rloo")).check_run(small_run(num_generations=1))
    MAGRPO(MAGRPOConfig(advantage_mode="raw")).check_run(small_run(num_generations=1))  # REINFORCE: no baseline


def test_an_algorithm_gets_its_own_config_class():
    with pytest.raises(TypeError, match="MAGRPOConfig"):
        MAGRPO(small_run())  # the runner's settings are not the algorithm's


class WrongShape(MAGRPO):
    def advantages(self, group):
        return {agent: torch.zeros(group.num_generations + 1) for agent in group.agents}


def test_a_wrong_advantage_shape_names_the_algorithm_and_the_shape():
    run = small_run()
    env = make_toy_env()
    policies = build_policies(run, env.possible_agents)
    opts = {a: torch.optim.AdamW(policies.parameters(a)) for a in env.possible_agents}
    obs, _ = env.reset(options={"task_id": "train-0"})
    with pytest.raises(ValueError, match=r"WrongShape\.advantages: 'first' has shape \(4,\), expected \(3,\)"):
        train_step(WrongShape(MAGRPOConfig()), env, obs, policies, opts, run)


def test_user_algorithm_trains_through_the_same_runner(tmp_path):
    from examples.ppo_clip_algorithm import MultiAgentPPOClip, PPOClipConfig

    out = tmp_path / "ppo"
    run = small_run(steps=2, output_dir=out, lr=1e-3)
    before = build_policies(run, ["first", "second"])
    initial = {a: dict(before.members[a].module.named_parameters()) for a in before.agents}
    summary = train(run, MultiAgentPPOClip(PPOClipConfig(clip_eps=0.1)), progress=False, make_env=make_toy_env)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and "clip_fraction/first" in rows[-1] and "loss/second" in rows[-1]
    assert summary["algo"] == "examples.ppo_clip_algorithm:MultiAgentPPOClip"
    record = json.loads((out / "config.json").read_text())
    assert record["algo"] == summary["algo"]
    assert record["algorithm_config"] == {"clip_eps": 0.1} and "advantage_mode" not in record
    trained = torch.load(out / "checkpoint.pt", weights_only=False)["policies"]
    for agent, params in initial.items():
        unchanged = [n for n, p in params.items() if torch.equal(p.detach(), trained[agent][n])]
        assert not unchanged, f"{agent}: every trainable parameter must change, unchanged: {unchanged}"


def test_subclass_needs_advantages():
    class Incomplete(Algorithm):
        pass

    with pytest.raises(TypeError):
        Incomplete()  # type: ignore[abstract]


def test_the_guide_example_is_a_working_algorithm(monkeypatch):
    """docs/add_your_own_algorithm.md's class, run as written."""
    import re
    import sys
    import types
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "add_your_own_algorithm.md").read_text()
    source = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    module = types.ModuleType("guide_example")
    monkeypatch.setitem(sys.modules, "guide_example", module)  # dataclasses look their module up
    exec(compile(source, "docs/add_your_own_algorithm.md", "exec"), module.__dict__)  # our own docs, not model output
    algo = module.MyAlgo(module.MyAlgoConfig(temperature_of_credit=2.0))
    adv = algo.advantages(hand_group([1.0, 2.0, 6.0], [[0.0, 0.0]] * 3))
    assert torch.allclose(adv["first"], torch.tensor([-2.0, 0.0, 8.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="num_generations"):
        algo.check_run(small_run(num_generations=1))
    assert algorithm_card(module.MyAlgo)["display_name"] == "My algorithm"
