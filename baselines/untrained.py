"""Untrained baselines of the MAGRPO paper (spec section 5) and the single-agent view of a two-agent env.

Every prompt is built from the env's own prompt (``obs[agent]["prompt"]`` = role instructions, a blank line,
the task message; the task message's last paragraph is the role's *cue*, e.g. ``Concise summary:`` or
``Your function `aux`:``). The additions below are inserted just before the cue, so the model still
continues after the cue it was trained on. Nothing here reads a task's tests.

Protocols (agent 1 = ``possible_agents[0]``; writing: summary/background; coding: helper):

``parallel``
    Both agents answer their own env prompt at the same time ("naive concatenation" in the paper).
``sequential``
    Agent 1 answers first; agent 2's prompt adds, before its cue, ``Your partner already wrote the first
    part:`` + agent 1's text and, on writing envs, a target length: ``Write about N words.`` with N =
    ``TARGET_RATIO[env] * words(agent 1)`` clamped to the env's published length gate (the ratio is the
    middle of the reward's length-ratio band). On coding the helper goes first and main is told
    ``The helper function `aux` is already written:`` + aux's code.
``discussion``
    Round 1 as ``parallel``; in round 2 each agent's prompt adds ``In a first draft you wrote:`` (its own
    round-1 text) and ``Your partner wrote:`` (the other's round-1 text) and ``Revise your part.``. A
    transcript record keeps both rounds as two turns (each scored by the env); the reported metrics are the
    last turn's, i.e. round 2's, as in the paper.
``single``
    One model answers ONE prompt for the whole task, see :func:`single_prompt`; its response is split into
    the env's two actions by :func:`split_single` (the delimiter rule), and the env scores that pair.

The delimiter rule (:func:`split_single`), writing envs: the model is asked to separate its two parts
with a line holding only ``---``. Part 1 = the text before the first such line, part 2 = the text after
it. Without that line: part 1 = the first paragraph and part 2 = the rest when the response has a blank
line; otherwise part 1 = the first sentence (up to the first ``.``, ``!`` or ``?`` followed by a space)
and part 2 = the rest; a response of one sentence gives part 2 = ``""`` (which the reward gates to 0).
Coding: the single response is the whole solution and becomes the ``main`` action; ``helper`` gets
``""``. A solution that defines its own helper functions is fine (they stay in main's block if nested;
top-level extra functions are dropped by the env's extractor, as for any main answer), but the structure
level's +0.4 for a defined ``aux`` and the cooperation bonus are out of reach by construction: the single
model's score is comparable on ``tests`` and ``syntax``, not on ``return``.

:class:`SingleAgentEnv` wraps a two-agent env as a one-agent env (agent ``single``) with exactly this
prompt and split, so training it with MAGRPO is the paper's "fine-tuned single model" (GRPO) baseline:
``llm-coop train --env single:coop_writing-v0``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any, Literal

from llm_coop_envs.core import CoopParallelEnv

__all__ = [
    "PROTOCOLS",
    "SINGLE_AGENT",
    "SINGLE_PREFIX",
    "TARGET_RATIO",
    "Protocol",
    "SingleAgentEnv",
    "discussion_prompt",
    "make_env",
    "sequential_prompt",
    "single_prompt",
    "split_cue",
    "split_single",
]

Protocol = Literal["parallel", "sequential", "discussion", "single"]
PROTOCOLS: tuple[str, ...] = ("single", "parallel", "sequential", "discussion")
SINGLE_AGENT = "single"
SINGLE_PREFIX = "single:"
DELIMITER = "---"
TARGET_RATIO = {"coop_writing-v0": 2.4, "coop_abstract_expansion-v0": 1.15}
"""Agent 2's target length as a multiple of agent 1's words (middle of the reward's length-ratio band)."""
_LENGTH_GATE = {"coop_writing-v0": (8, 256), "coop_abstract_expansion-v0": (128, 256)}
_SINGLE_INSTRUCTIONS = {
    "coop_writing-v0": (
        "Write a two-paragraph summary of the forum post below. First paragraph: a concise summary of the "
        "post's main point in one to three sentences. Second paragraph: a more detailed summary that uses more "
        "unique words and links its ideas with a few transition words (for example 'moreover', 'however', "
        "'as a result'). Put a line holding only --- between the two paragraphs. Output only the two paragraphs."
    ),
    "coop_abstract_expansion-v0": (
        "Turn the paper abstract below into an introduction of two parts. Part one: the background and "
        "motivation (the problem, why it matters, what earlier work leaves open), about 150 to 250 words. Part "
        "two: the method and its implications (the approach, the key results and what they mean), about 150 "
        "to 250 words. Put a line holding only --- between the two parts. Output only the two parts."
    ),
    "coop_coding-v0": (
        "You are a Python programmer. Write the problem's function, with the name and signature given, that "
        "solves the problem below. Put any imports it needs inside the function. Output only the code of the "
        "function: no explanations, no markdown fences, no tests."
    ),
}
_SINGLE_CUE = {"coop_writing-v0": "Summary:", "coop_abstract_expansion-v0": "Introduction:"}


def base_env_id(env_id: str) -> str:
    return env_id[len(SINGLE_PREFIX) :] if env_id.startswith(SINGLE_PREFIX) else env_id


def split_cue(prompt: str) -> tuple[str, str]:
    """(everything before the cue, the cue): the cue is the prompt's last blank-line-separated paragraph."""
    head, sep, cue = prompt.rpartition("\n\n")
    if not sep:
        raise ValueError("prompt has no blank line before its cue; cannot insert baseline text")
    return head, cue


def _insert(prompt: str, addition: str) -> str:
    head, cue = split_cue(prompt)
    return f"{head}\n\n{addition.strip()}\n\n{cue}"


def _words(text: str) -> int:
    return len(text.split())


def sequential_prompt(env_id: str, prompt: str, first_text: str) -> str:
    """Agent 2's prompt in the sequential pipeline (see the module docstring)."""
    env_id = base_env_id(env_id)
    if env_id == "coop_coding-v0":
        return _insert(prompt, f"The helper function `aux` is already written:\n\n{first_text.strip()}")
    low, high = _LENGTH_GATE.get(env_id, (1, 10_000))
    target = min(max(round(TARGET_RATIO.get(env_id, 1.0) * _words(first_text)), low), high)
    return _insert(
        prompt, f"Your partner already wrote the first part:\n\n{first_text.strip()}\n\nWrite about {target} words."
    )


def discussion_prompt(prompt: str, own_draft: str, partner_draft: str) -> str:
    """Round-2 prompt of the one-round discussion: both round-1 drafts, then a request to revise."""
    addition = (
        f"In a first draft you wrote:\n\n{own_draft.strip()}\n\nYour partner wrote:\n\n{partner_draft.strip()}"
        "\n\nRevise your part so that the two parts fit together. Output only your part."
    )
    return _insert(prompt, addition)


def single_prompt(env_id: str, env: CoopParallelEnv, prompts: Mapping[str, str]) -> str:
    """The one prompt of the single-model baseline, from the env's prompt for the LAST agent (writing: its
    task text; coding: main's problem statement and cue), with single-model instructions."""
    env_id = base_env_id(env_id)
    if env_id not in _SINGLE_INSTRUCTIONS:
        raise ValueError(f"no single-model prompt for {env_id!r}; known: {', '.join(_SINGLE_INSTRUCTIONS)}")
    last = env.possible_agents[-1]
    body = prompts[last][len(env.role_instructions(last)) :].strip()  # task message = source text + cue
    text, cue = split_cue(body)
    cue = _SINGLE_CUE.get(env_id, cue)
    return f"{_SINGLE_INSTRUCTIONS[env_id]}\n\n{text}\n\n{cue}"


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_single(env_id: str, agents: list[str], text: str) -> dict[str, str]:
    """The env's joint action from one single-model response (the delimiter rule, module docstring)."""
    first, second = agents
    if base_env_id(env_id) == "coop_coding-v0":
        return {first: "", second: text}
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.strip() == DELIMITER:
            return {first: "\n".join(lines[:i]).strip(), second: "\n".join(lines[i + 1 :]).strip()}
    head, sep, rest = text.strip().partition("\n\n")
    if sep:
        return {first: head.strip(), second: rest.strip()}
    parts = _SENTENCE_END.split(text.strip(), maxsplit=1)
    return {first: parts[0].strip(), second: parts[1].strip() if len(parts) > 1 else ""}


class SingleAgentEnv:
    """A two-agent env seen as a one-agent env: agent ``single`` gets :func:`single_prompt`; its action is
    split by :func:`split_single` and the inner env scores the pair. Single turn only. Rewards, infos and
    breakdowns are the inner env's (``infos["single"]`` = agent 1's info; the individual reward is the
    joint reward, so ``reward_mode`` makes no difference)."""

    possible_agents = [SINGLE_AGENT]

    def __init__(self, inner: CoopParallelEnv, env_id: str):
        if inner.max_turns != 1:
            raise ValueError("SingleAgentEnv is single-turn only (max_turns=1)")
        self.inner, self.env_id = inner, env_id
        self.agents: list[str] = []
        self.last_actions: dict[str, str] = {}

    @property
    def reward_mode(self) -> str:
        return "joint"

    @property
    def spec(self) -> Any:
        return self.inner.spec

    def task_ids(self, split: str | None = None) -> list[str]:
        return self.inner.task_ids(split)

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, infos = self.inner.reset(seed=seed, options=options)
        self.agents = [SINGLE_AGENT]
        prompt = single_prompt(self.env_id, self.inner, {a: o["prompt"] for a, o in obs.items()})
        return {SINGLE_AGENT: {"prompt": prompt}}, {SINGLE_AGENT: infos[self.inner.possible_agents[0]]}

    def step(self, actions: dict[str, str]):
        if set(actions) != {SINGLE_AGENT}:
            raise ValueError(f"SingleAgentEnv expects exactly the action of {SINGLE_AGENT!r}, got {sorted(actions)}")
        self.last_actions = split_single(self.env_id, list(self.inner.possible_agents), actions[SINGLE_AGENT])
        _, rewards, terms, truncs, infos = self.inner.step(self.last_actions)
        first = self.inner.possible_agents[0]
        info = dict(infos[first])
        info["individual_reward"] = info["joint_reward"]
        self.agents = []
        joint = float(info["joint_reward"])
        return (
            {},
            {SINGLE_AGENT: joint},
            {SINGLE_AGENT: terms[first]},
            {SINGLE_AGENT: truncs[first]},
            {SINGLE_AGENT: info},
        )

    def clone(self) -> SingleAgentEnv:
        other = copy.copy(self)
        other.inner = self.inner.clone()
        other.agents = list(self.agents)
        return other


def make_env(env_id: str, **kwargs: Any) -> Any:
    """``llm_coop_envs.make`` that also accepts ``single:<id>`` (the single-agent view of ``<id>``)."""
    from llm_coop_envs import make

    if env_id.startswith(SINGLE_PREFIX):
        base = base_env_id(env_id)
        kwargs.pop("reward_mode", None)
        return SingleAgentEnv(make(base, **kwargs), base)
    return make(env_id, **kwargs)
