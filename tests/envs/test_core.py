"""The cooperative env core: task selection, bad input, branching, reward modes, multi-turn prompts."""

from __future__ import annotations

import copy

import pytest

from llm_coop_envs import make
from llm_coop_envs.core import UnicodeText

GOOD = {
    "summary": "The poster wants advice about a tricky situation with a neighbour and some shared costs.",
    "elaboration": (
        "The poster describes a long running disagreement with a neighbour about shared fence repair costs. "
        "Moreover, the neighbour refuses to answer letters, however the poster still hopes to stay friendly. "
        "As a result they ask whether small claims court, mediation or simply paying everything is wiser."
    ),
}


@pytest.fixture
def env():
    return make("coop_writing-v0")


@pytest.mark.parametrize(
    ("env_id", "short", "long"),
    [("coop_writing-v0", 20, 48), ("coop_abstract_expansion-v0", 150, 172)],
)
def test_agents_are_in_paper_order_the_reward_reads_agent_1_as_the_first_part(env_id, short, long) -> None:
    """Agent 1 writes the first (shorter) part: the length-ratio level pays for long/short, not short/long."""
    env = make(env_id)
    task = env.tasks.split_tasks("test")[0]
    first, second = env.possible_agents
    texts = {"short": " ".join(f"w{i}" for i in range(short)), "long": " ".join(f"v{i}" for i in range(long))}
    ordered = env.score(task, {first: texts["short"], second: texts["long"]}).breakdown["level2"]
    swapped = env.score(task, {first: texts["long"], second: texts["short"]}).breakdown["level2"]
    assert ordered > swapped


def test_reset_options_select_tasks(env) -> None:
    test_ids = env.task_ids("test")
    assert len(test_ids) >= 12 and set(test_ids).isdisjoint(env.task_ids("train"))
    _, infos = env.reset(options={"task_id": test_ids[3]})
    assert infos["summary"]["task_id"] == test_ids[3] and infos["summary"]["split"] == "test"
    _, infos = env.reset(options={"split": "test", "index": 2})
    assert infos["summary"]["task_id"] == test_ids[2]
    _, infos = env.reset(seed=3, options={"split": "test"})
    assert infos["summary"]["split"] == "test"
    _, infos = env.reset(seed=3)
    assert infos["summary"]["split"] == "train"


def test_unknown_reset_option_warns(env) -> None:
    with pytest.warns(UserWarning, match=r"ignoring unknown reset option\(s\) \['colour'\]"):
        env.reset(seed=0, options={"colour": "red"})


def test_reset_seed_is_per_instance(env) -> None:
    import numpy as np

    np.random.seed(0)
    a = [make("coop_writing-v0").reset(seed=s)[1]["summary"]["task_id"] for s in range(8)]
    np.random.seed(1)
    b = [make("coop_writing-v0").reset(seed=s)[1]["summary"]["task_id"] for s in range(8)]
    assert a == b and len(set(a)) > 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"task_id": "no-such-task"}, "unknown task id 'no-such-task'"),
        ({"split": "validation"}, "unknown split 'validation'"),
        ({"split": "test", "index": 10_000}, "'index' must be an int"),
        ({"task_id": "post-001", "split": "test"}, "cannot be combined"),
    ],
)
def test_bad_reset_options(env, options, message) -> None:
    env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        env.reset(options=options)
    assert env.step(GOOD)[1]["summary"] > 0  # still usable, episode unchanged


@pytest.mark.parametrize(
    ("actions", "error", "message"),
    [
        ({"summary": "only one"}, ValueError, r"missing \['elaboration'\]"),
        ({**GOOD, "critic": "extra"}, ValueError, r"unexpected \['critic'\]"),
        ({"summary": 42, "elaboration": "text"}, TypeError, "agent 'summary' must be a str, got int"),
        ({"summary": None, "elaboration": "text"}, TypeError, "must be a str, got NoneType"),
        (["summary", "elaboration"], TypeError, "actions must be a dict"),
        (
            {"summary": "x" * 20_000, "elaboration": "text"},
            ValueError,
            "20000 characters; the limit is max_action_chars=16384",
        ),
    ],
)
def test_bad_actions_raise_and_leave_env_usable(env, actions, error, message) -> None:
    env.reset(seed=0)
    with pytest.raises(error, match=message):
        env.step(actions)
    _, rewards, _, truncations, _ = env.step(GOOD)
    assert rewards["summary"] > 0 and all(truncations.values())


def test_step_before_reset_and_after_end(env) -> None:
    with pytest.raises(ValueError, match="before reset"):
        env.step(GOOD)
    env.reset(seed=0)
    env.step(GOOD)
    with pytest.raises(ValueError, match="after the episode ended"):
        env.step(GOOD)
    env.reset(seed=0)
    assert env.step(GOOD)[1]["summary"] > 0


def test_close_is_idempotent(env) -> None:
    env.reset(seed=0)
    env.close()
    env.close()
    with pytest.raises(ValueError, match="closed"):
        env.reset()


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="max_turns"):
        make("coop_writing-v0", max_turns=0)
    with pytest.raises(ValueError, match="reward_mode"):
        make("coop_writing-v0", reward_mode="selfish")
    with pytest.raises(ValueError, match="render_mode"):
        make("coop_writing-v0", render_mode="rgb_array")
    with pytest.raises(ValueError, match="unknown split"):
        make("coop_writing-v0", split="dev")
    with pytest.raises(ValueError, match="unknown agent"):
        make("coop_writing-v0").observation_space("critic")


def test_clone_continues_exactly_like_the_original() -> None:
    env = make("coop_writing-v0", max_turns=3)
    env.reset(seed=5)
    env.step({"summary": "first try", "elaboration": "first longer try"})
    twin = env.clone()
    assert twin.agents == env.agents and twin.history == env.history
    for turn in range(2):
        actions = {agent: f"{agent} answer {turn} " + GOOD[agent] for agent in env.agents}
        assert env.step(dict(actions)) == twin.step(dict(actions))
    assert env.reset() == twin.reset()  # RNG state was copied too


def test_clones_are_independent_branches() -> None:
    env = make("coop_writing-v0", max_turns=2)
    env.reset(seed=0)
    branches = [env.clone() for _ in range(4)]
    results = [
        b.step({"summary": "short " * (g + 8), "elaboration": GOOD["elaboration"]}) for g, b in enumerate(branches)
    ]
    assert len({r[1]["summary"] for r in results}) > 1
    assert env.history == () and env.agents == ["summary", "elaboration"]
    snapshot = copy.deepcopy(env.state())
    branches[0].step({"summary": "again", "elaboration": "again"})
    assert env.state() == snapshot


def test_multi_turn_prompt_holds_own_history_and_feedback() -> None:
    env = make("coop_writing-v0", max_turns=2)
    env.reset(seed=0)
    observations, _, _, truncations, infos = env.step(GOOD)
    assert not any(truncations.values())
    for agent in env.agents:
        prompt = observations[agent]["prompt"]
        assert GOOD[agent] in prompt and "Feedback on the joint text" in prompt
        other = next(a for a in GOOD if a != agent)
        assert GOOD[other] not in prompt  # never the partner's transcript
        roles = [m["role"] for m in infos[agent]["messages"]]
        assert roles == ["system", "user", "assistant", "user"]


def test_success_threshold_terminates() -> None:
    env = make("coop_writing-v0", max_turns=3, success_threshold=1.0)
    env.reset(seed=0)
    _, rewards, terminations, truncations, infos = env.step(GOOD)
    assert rewards["summary"] >= 1.0 and all(terminations.values()) and not any(truncations.values())
    assert infos["summary"]["solved"] and env.agents == []


def test_unicode_text_space() -> None:
    space = UnicodeText(50)
    assert space.contains("code: def f(x):\n\treturn {x: 'é'} 🙂")
    assert not space.contains("x" * 51) and not space.contains(b"bytes") and not space.contains("\ud800")
    space.seed(0)
    assert space.contains(space.sample())
