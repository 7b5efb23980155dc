"""The env hooks that hold task knowledge for untrained protocols and the single-model view, and the default
batch scorer, for every registered env."""

from __future__ import annotations

import pytest

from llm_coop_envs import make, registry_ids
from llm_coop_envs.core import CoopParallelEnv, split_cue, split_two_parts
from llm_coop_envs.summarisation import SummarisationEnv

WRITING = ("coop_writing-v0", "coop_abstract_expansion-v0")


@pytest.mark.parametrize("env_id", registry_ids())
def test_single_model_prompt_has_the_instructions_the_task_and_a_cue(env_id):
    env = make(env_id)
    obs, _ = env.reset(seed=0)
    prompt = env.single_model_prompt({a: o["prompt"] for a, o in obs.items()})
    assert prompt.startswith(type(env).single_instructions)
    last = env.possible_agents[-1]
    source, cue = split_cue(obs[last]["prompt"][len(env.role_instructions(last)) :].strip())
    assert source in prompt and prompt.endswith(type(env).single_cue or cue)
    env.close()


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("One two.\n---\nThree four.", ("One two.", "Three four.")),
        ("First paragraph.\n\nSecond one here.", ("First paragraph.", "Second one here.")),
        ("First sentence. Then the rest of it.", ("First sentence.", "Then the rest of it.")),
        ("Only one sentence", ("Only one sentence", "")),
        ("a b.\n\nc d.\n\ne f.", ("a b.", "c d.\n\ne f.")),
        ("x\n---\ny\n---\nz", ("x", "y\n---\nz")),
        ("One sentence. Then the rest! And more.", ("One sentence.", "Then the rest! And more.")),
    ],
)
def test_the_delimiter_rule(text, parts):
    assert split_two_parts(text) == parts
    env = make("coop_writing-v0")
    assert env.split_single_response(text) == dict(zip(env.possible_agents, parts, strict=True))


def test_a_coding_single_response_is_all_main():
    env = make("coop_coding-v0")
    assert env.split_single_response("def f():\n    return 1") == {"helper": "", "main": "def f():\n    return 1"}
    assert "`aux` is already written" in env.handoff_message("def aux(x):\n    return x")
    env.close()


@pytest.mark.parametrize(
    ("env_id", "words", "target"),
    [("coop_writing-v0", 10, 24), ("coop_writing-v0", 200, 256), ("coop_abstract_expansion-v0", 1, 128)],
)
def test_the_sequential_hand_off_targets_a_clamped_length(env_id, words, target):
    message = make(env_id).handoff_message(" ".join(["w"] * words))
    assert message.endswith(f"Write about {target} words.")


class Bare(SummarisationEnv):
    """A writing env that declares none of the protocol hooks."""

    single_instructions = None

    def handoff_message(self, first_text: str) -> str:
        return CoopParallelEnv.handoff_message(self, first_text)


def test_an_env_without_the_hooks_raises_instead_of_guessing():
    env = Bare()
    obs, _ = env.reset(seed=0)
    with pytest.raises(NotImplementedError, match="Bare defines no single-model prompt"):
        env.single_model_prompt({a: o["prompt"] for a, o in obs.items()})
    with pytest.raises(NotImplementedError, match="Bare defines no sequential hand-off"):
        env.handoff_message("text")


@pytest.mark.parametrize("env_id", WRITING)
def test_the_default_batch_scorer_equals_scoring_one_by_one(env_id):
    env = make(env_id)
    tasks = env.tasks.split_tasks("test")[:3]
    items = [
        (task, {a: f"{a} says {task.task_id}. " * (i + 3) for a in env.possible_agents}) for i, task in enumerate(tasks)
    ]
    assert env.score_many(items) == [env.score(task, actions) for task, actions in items]
