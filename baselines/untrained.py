"""Untrained baselines of the MAGRPO paper (docs/method.md, section 10) and the single-agent view of a two-agent env.

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

:class:`llm_coop_envs.wrappers.SingleAgentEnv` wraps a two-agent env as a one-agent env (agent ``single``)
with exactly this prompt and split, so training it with MAGRPO is the paper's "fine-tuned single model"
(GRPO) baseline: ``llm-coop train --env single:coop_writing-v0``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

from llm_coop_envs.core import CoopParallelEnv
from llm_coop_envs.wrappers import SINGLE_AGENT, SINGLE_PREFIX, SingleAgentEnv, base_env_id, make_env

__all__ = [
    "PROTOCOLS",
    "SINGLE_AGENT",
    "SINGLE_PREFIX",
    "TARGET_RATIO",
    "Protocol",
    "SingleAgentEnv",
    "base_env_id",
    "discussion_prompt",
    "make_env",
    "sequential_prompt",
    "single_prompt",
    "split_cue",
    "split_single",
]

Protocol = Literal["parallel", "sequential", "discussion", "single"]
PROTOCOLS: tuple[str, ...] = ("single", "parallel", "sequential", "discussion")
DELIMITER = "---"
TARGET_RATIO = {"coop_writing-v0": 2.4, "coop_abstract_expansion-v0": 1.15}
"""Agent 2's target length as a multiple of agent 1's words (middle of the reward's length-ratio band)."""
_LENGTH_GATE = {"coop_writing-v0": (8, 256), "coop_abstract_expansion-v0": (128, 256)}


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
    """The one prompt of the single-model baseline: the env's :meth:`~CoopParallelEnv.single_model_prompt`."""
    return env.single_model_prompt(prompts)


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
