"""The single-agent view over several turns: one model revises its whole answer after the env's feedback."""

from __future__ import annotations

import json

import pytest

from llm_coop_envs import make
from llm_coop_envs.coding import CodingEnv
from llm_coop_envs.wrappers import SINGLE_AGENT, SingleAgentEnv, make_env

PROBLEM = {
    "task_id": "tiny/0",
    "prompt": 'def add_all(xs):\n    """ Sum of xs.\n    >>> add_all([1, 2])\n    3\n    """\n',
    "entry_point": "add_all",
    "test": "def check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([5, 5]) == 10\n",
}
WRONG = "def add_all(xs):\n    return 0"
RIGHT = "def add_all(xs):\n    return sum(xs)"


@pytest.fixture
def single(tmp_path) -> SingleAgentEnv:
    path = tmp_path / "tiny.jsonl"
    path.write_text(json.dumps(PROBLEM) + "\n")
    return SingleAgentEnv(CodingEnv(str(path), max_turns=2))


def test_a_wrong_first_answer_gets_the_single_models_feedback_and_a_second_turn(single) -> None:
    obs, infos = single.reset(seed=0)
    first_prompt = obs[SINGLE_AGENT]["prompt"]
    assert [m["role"] for m in infos[SINGLE_AGENT]["messages"]] == ["system", "user"]
    assert single.max_turns == 2 and infos[SINGLE_AGENT]["answer_start"] == ""
    obs, rewards, terms, truncs, infos = single.step({SINGLE_AGENT: WRONG})
    assert not terms[SINGLE_AGENT] and not truncs[SINGLE_AGENT] and single.agents == [SINGLE_AGENT]
    messages = single.chat_messages(SINGLE_AGENT)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] == WRONG and infos[SINGLE_AGENT]["messages"] == messages
    feedback = messages[3]["content"]
    assert feedback.startswith(f"Feedback on your code (reward {rewards[SINGLE_AGENT]:.2f} of 4.00)")
    assert "`assert add_all([1, 2]) == 3`: failed" in feedback and "Revise your function `add_all`" in feedback
    assert "aux" not in feedback, "the single model writes no helper: no lines about aux"
    assert "[5, 5]" not in obs[SINGLE_AGENT]["prompt"], "the hidden test never reaches a prompt"
    assert obs[SINGLE_AGENT]["prompt"] == f"{first_prompt}\n\n{WRONG}\n\n{feedback}"
    _, rewards, terms, truncs, _ = single.step({SINGLE_AGENT: RIGHT})
    assert truncs[SINGLE_AGENT] or terms[SINGLE_AGENT]
    assert single.agents == [] and len(single.inner.history) == 2
    assert single.inner.history[1].actions == {"helper": "", "main": RIGHT}
    assert rewards[SINGLE_AGENT] == single.inner.history[1].score.joint > single.inner.history[0].score.joint


def test_a_solved_first_turn_ends_the_episode(single) -> None:
    single.reset(seed=0)
    obs, _, terms, _, infos = single.step({SINGLE_AGENT: RIGHT})
    assert terms[SINGLE_AGENT] and obs == {} and single.agents == []
    assert infos[SINGLE_AGENT]["messages"] == single.chat_messages(SINGLE_AGENT)  # its own chat, not the helper's
    assert [m["role"] for m in infos[SINGLE_AGENT]["messages"]] == ["system", "user"]


def test_clones_keep_their_own_chat(single) -> None:
    single.reset(seed=0)
    twin = single.clone()
    single.step({SINGLE_AGENT: WRONG})
    assert len(single.chat_messages(SINGLE_AGENT)) == 4 and len(twin.chat_messages(SINGLE_AGENT)) == 2
    twin.step({SINGLE_AGENT: "def add_all(xs):\n    return 1"})
    assert twin.chat_messages(SINGLE_AGENT)[2]["content"].endswith("return 1")
    assert single.chat_messages(SINGLE_AGENT)[2]["content"] == WRONG


def test_plain_and_callable_feedback_reach_the_single_model(tmp_path) -> None:
    path = tmp_path / "tiny.jsonl"
    path.write_text(json.dumps(PROBLEM) + "\n")
    plain = SingleAgentEnv(CodingEnv(str(path), max_turns=2, feedback="plain"))
    plain.reset(seed=0)
    obs, *_ = plain.step({SINGLE_AGENT: WRONG})
    assert (
        "Revise your function `add_all`" in obs[SINGLE_AGENT]["prompt"]
        and "Feedback" not in obs[SINGLE_AGENT]["prompt"]
    )
    seen = []
    note = SingleAgentEnv(CodingEnv(str(path), max_turns=2, feedback=lambda f, a, h: seen.append(a) or f"NOTE {a}"))
    note.reset(seed=0)
    obs, *_ = note.step({SINGLE_AGENT: WRONG})
    assert obs[SINGLE_AGENT]["prompt"].endswith("NOTE main") and seen[-1] == "main"  # main's feedback, as is


def test_writing_envs_give_the_last_agents_feedback_by_default() -> None:
    env = make_env("single:coop_writing-v0", max_turns=2)
    env.reset(seed=0)
    obs, _, terms, truncs, _ = env.step({SINGLE_AGENT: "A short summary.\n---\nA longer elaboration of it."})
    assert not terms[SINGLE_AGENT] and not truncs[SINGLE_AGENT]  # far below the success threshold
    inner = env.inner
    team = make("coop_writing-v0", max_turns=2)
    expected = team.feedback_message(inner.current_task, inner.possible_agents[-1], inner.history)
    assert env.chat_messages(SINGLE_AGENT)[-1]["content"] == expected
