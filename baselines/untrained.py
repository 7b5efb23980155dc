"""Untrained baselines of the MAGRPO paper (docs/method.md, section 10): their prompts and their rounds.

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
    ``handoff_ratio * words(agent 1)`` clamped to the env's published length gate (the ratio is the middle
    of the reward's length-ratio band); the env says all this (:meth:`CoopParallelEnv.handoff_message`). On
    coding the helper goes first and main is told ``The helper function `aux` is already written:`` + aux's
    code.
``discussion``
    Round 1 as ``parallel``; in round 2 each agent's prompt adds ``In a first draft you wrote:`` (its own
    round-1 text) and ``Your partner wrote:`` (the other's round-1 text) and ``Revise your part.``. A
    transcript record keeps both rounds as two turns (each scored by the env); the reported metrics are the
    last turn's, i.e. round 2's, as in the paper.
``single``
    One model answers ONE prompt for the whole task (the env's :meth:`CoopParallelEnv.single_model_prompt`);
    its response is split into the env's two actions by the env's
    :meth:`CoopParallelEnv.split_single_response` (the delimiter rule), and the env scores that pair. An env
    without these hooks raises instead of getting default texts.

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

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from llm_coop_envs.core import CoopParallelEnv, split_cue
from llm_coop_envs.wrappers import SINGLE_AGENT, SINGLE_PREFIX, SingleAgentEnv, base_env_id, make_env

__all__ = [
    "PROTOCOLS",
    "SINGLE_AGENT",
    "SINGLE_PREFIX",
    "Generate",
    "Protocol",
    "Round",
    "SingleAgentEnv",
    "base_env_id",
    "discussion_prompt",
    "generate_calls",
    "make_env",
    "run_protocol",
    "sequential_prompt",
    "single_prompt",
    "split_cue",
    "split_single",
]

Protocol = Literal["parallel", "sequential", "discussion", "single"]
PROTOCOLS: tuple[str, ...] = ("single", "parallel", "sequential", "discussion")


def _insert(prompt: str, addition: str) -> str:
    head, cue = split_cue(prompt)
    return f"{head}\n\n{addition.strip()}\n\n{cue}"


def sequential_prompt(env: CoopParallelEnv, prompt: str, first_text: str) -> str:
    """Agent 2's prompt in the sequential pipeline: the env's hand-off message before its cue."""
    return _insert(prompt, env.handoff_message(first_text))


def discussion_prompt(prompt: str, own_draft: str, partner_draft: str) -> str:
    """Round-2 prompt of the one-round discussion: both round-1 drafts, then a request to revise."""
    addition = (
        f"In a first draft you wrote:\n\n{own_draft.strip()}\n\nYour partner wrote:\n\n{partner_draft.strip()}"
        "\n\nRevise your part so that the two parts fit together. Output only your part."
    )
    return _insert(prompt, addition)


def single_prompt(env: CoopParallelEnv, prompts: Mapping[str, str]) -> str:
    """The one prompt of the single-model baseline: the env's :meth:`~CoopParallelEnv.single_model_prompt`."""
    return env.single_model_prompt(prompts)


def split_single(env: CoopParallelEnv, text: str) -> dict[str, str]:
    """The env's joint action from one single-model response (:meth:`~CoopParallelEnv.split_single_response`)."""
    return env.split_single_response(text)


@dataclass
class Round:
    """The texts of one round for every episode of a batch, and its timing."""

    actions: list[dict[str, str]]
    seconds: float  # wall time of the round (parallel agents: the slower agent)
    generation_seconds: float  # summed time of every generate call
    new_tokens: list[int]  # per episode


Generate = Callable[[str, list[str]], tuple[list[str], list[int], float]]


def _parallel_round(generate: Generate, prompts: Mapping[str, list[str]]) -> Round:
    results = {agent: generate(agent, ps) for agent, ps in prompts.items()}
    rows = len(next(iter(prompts.values())))
    actions = [{agent: results[agent][0][i] for agent in prompts} for i in range(rows)]
    tokens = [sum(results[agent][1][i] for agent in prompts) for i in range(rows)]
    times = [r[2] for r in results.values()]
    return Round(actions, max(times), sum(times), tokens)


def generate_calls(protocol: str, agents: int) -> int:
    """How many ``generate`` calls :func:`run_protocol` makes per batch: one per agent and round, one for
    ``single``."""
    calls = {"single": 1, "parallel": agents, "sequential": agents, "discussion": 2 * agents}
    if protocol not in calls:
        raise ValueError(f"unknown protocol {protocol!r}; protocols: {', '.join(PROTOCOLS)}")
    return calls[protocol]


def run_protocol(
    protocol: str, env: CoopParallelEnv, prompts: Mapping[str, list[str]], generate: Generate
) -> list[Round]:
    """The rounds of ``protocol`` for a batch of episodes; ``prompts[agent][i]`` is episode i's env prompt."""
    agents = list(env.possible_agents)
    first, second = agents
    if protocol == "parallel":
        return [_parallel_round(generate, prompts)]
    if protocol == "single":
        rows = len(prompts[first])
        singles = [single_prompt(env, {a: prompts[a][i] for a in agents}) for i in range(rows)]
        texts, tokens, seconds = generate(SINGLE_AGENT, singles)
        actions = [split_single(env, text) for text in texts]
        return [Round(actions, seconds, seconds, tokens)]
    if protocol == "sequential":
        one = _parallel_round(generate, {first: prompts[first]})
        follow = [sequential_prompt(env, p, a[first]) for p, a in zip(prompts[second], one.actions, strict=True)]
        two = _parallel_round(generate, {second: follow})
        actions = [{first: a[first], second: b[second]} for a, b in zip(one.actions, two.actions, strict=True)]
        tokens = [x + y for x, y in zip(one.new_tokens, two.new_tokens, strict=True)]
        seconds = one.seconds + two.seconds
        return [Round(actions, seconds, one.generation_seconds + two.generation_seconds, tokens)]
    if protocol == "discussion":
        one = _parallel_round(generate, prompts)
        revised = {
            agent: [discussion_prompt(p, a[agent], a[other]) for p, a in zip(prompts[agent], one.actions, strict=True)]
            for agent, other in ((first, second), (second, first))
        }
        return [one, _parallel_round(generate, revised)]
    raise ValueError(f"unknown protocol {protocol!r}; protocols: {', '.join(PROTOCOLS)}")
