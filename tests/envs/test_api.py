"""PettingZoo conformance and shared behaviour of EVERY registered environment."""

from __future__ import annotations

import pettingzoo
import pytest
from pettingzoo.test import api_test, parallel_api_test, render_test
from pettingzoo.utils.conversions import parallel_to_aec

from llm_coop_envs import make, registry_ids

ENV_IDS = registry_ids()


def prompt_tail(observations, agent: str) -> str:
    return " ".join(observations[agent]["prompt"].split()[-12:])


def play(env, seed: int, options=None, episodes: int = 3) -> list:
    trace = []
    observations, infos = env.reset(seed=seed, options=options)
    for _ in range(episodes):
        trace.append((observations, infos))
        turn = 0
        while env.agents:
            actions = {a: f"turn {turn} {a}: {prompt_tail(observations, a)}" for a in env.agents}
            observations, rewards, terminations, truncations, infos = env.step(actions)
            trace.append((observations, rewards, terminations, truncations, infos))
            turn += 1
        observations, infos = env.reset()
    return trace


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_parallel_api(env_id: str) -> None:
    parallel_api_test(make(env_id), num_cycles=20)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_aec_api(env_id: str) -> None:
    api_test(parallel_to_aec(make(env_id)), num_cycles=20)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_render(env_id: str) -> None:
    render_test(lambda render_mode=None: parallel_to_aec(make(env_id, render_mode=render_mode)))
    env = make(env_id, render_mode="ansi")
    env.reset(seed=0)
    env.step({a: "some text" for a in env.agents})
    text = env.render()
    assert isinstance(text, str) and "some text" in text and "joint reward" in text


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_registered_with_pettingzoo(env_id: str) -> None:
    par = pettingzoo.make("parallel", env_id)
    assert par.possible_agents == make(env_id).possible_agents
    aec = pettingzoo.make("aec", env_id)
    aec.reset(seed=0)
    assert aec.agents == par.possible_agents


@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize("max_turns", [1, 3])
def test_max_turns_truncates(env_id: str, max_turns: int) -> None:
    env = make(env_id, max_turns=max_turns)
    env.reset(seed=1)
    steps = 0
    while env.agents:
        agents = list(env.agents)
        _, _, terminations, truncations, infos = env.step({a: f"attempt {steps}" for a in agents})
        steps += 1
        assert not any(terminations.values())
        assert all(truncations.values()) == (steps == max_turns)
        assert all(infos[a]["turn"] == steps for a in agents)
    assert steps == max_turns
    assert env.agents == []


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_multi_step_determinism(env_id: str) -> None:
    first = play(make(env_id, max_turns=2), seed=7)
    second = play(make(env_id, max_turns=2), seed=7)
    assert first == second
    other = play(make(env_id, max_turns=2), seed=8)
    assert [t[0] for t in other[::3]] != [t[0] for t in first[::3]] or len(make(env_id).task_ids("train")) == 1


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_observations_fit_their_space(env_id: str) -> None:
    env = make(env_id, max_turns=2)
    for seed in range(3):
        observations, _ = env.reset(seed=seed)
        while True:
            for agent, observation in observations.items():
                assert env.observation_space(agent).contains(observation), (agent, observation)
                assert env.observation_space(agent) is env.observation_space(agent)
                assert env.action_space(agent) is env.action_space(agent)
            if not env.agents:
                break
            observations, *_ = env.step({a: "Ünïcode, code `x = {1: 2}`\tand emoji 🙂" for a in env.agents})


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_infos_carry_both_rewards_and_breakdown(env_id: str) -> None:
    for mode in ("joint", "independent"):
        env = make(env_id, reward_mode=mode)
        env.reset(seed=0)
        agents = list(env.agents)
        _, rewards, _, _, infos = env.step({a: "a short answer" for a in agents})
        for agent in agents:
            info = infos[agent]
            assert {"joint_reward", "individual_reward", "breakdown", "solved", "task_id", "messages"} <= set(info)
            expected = info["joint_reward"] if mode == "joint" else info["individual_reward"]
            assert rewards[agent] == expected
            assert {"structure", "return"} <= set(info["breakdown"])
        assert len({infos[a]["joint_reward"] for a in agents}) == 1


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_chat_messages_match_raw_prompt(env_id: str) -> None:
    env = make(env_id)
    observations, infos = env.reset(seed=0)
    for agent in env.agents:
        messages = infos[agent]["messages"]
        assert [m["role"] for m in messages] == ["system", "user"]
        assert observations[agent]["prompt"] == "\n\n".join(m["content"] for m in messages)
