"""``coop_writing-v0``: two agents write a two-paragraph summary of a forum post together.

The MAGRPO paper's TLDR task (arXiv 2508.04652, docs/rewards.md), with the published reward.

**Agents** (paper order): ``summary`` (agent 1) writes paragraph 1, a concise summary of the post;
``elaboration`` (agent 2) writes paragraph 2, a more detailed summary that uses more unique words and
some transition words. They write at the same time and do not see each other's text. The joint output
is paragraph 1 followed by paragraph 2.

**Observation**: ``{"prompt": str}``. The raw prompt is the role instructions, a blank line, the post
(``SUBREDDIT: r/...`` / ``TITLE: ...`` / ``POST: ...``) and a cue line (``Concise summary:`` or
``Detailed summary:``). ``infos[agent]["messages"]`` holds the same as a system + user chat.

**Action**: the agent's paragraph, a string of at most ``max_action_chars`` characters.

**Joint reward** (range 0 to 3.0; practical maximum 2.98 since at most 12 transition categories exist).
``c1`` = summary, ``c2`` = elaboration; notation in :mod:`llm_coop_envs.writing`. Levels are gated: a
level that fails ends the sum.

1. ``L1 = 0.5`` if ``8 <= tok(c1) <= 256`` and ``8 <= tok(c2) <= 256``; otherwise the reward is 0.
2. ``rho = len(c2) / len(c1)``: ``L2 = 1`` if ``1.6 <= rho <= 3.2``; ``(rho - 1.1) / 0.5`` if
   ``1.1 <= rho < 1.6``; ``1 - (rho - 3.2) / 1.8`` if ``3.2 < rho <= 5.0``; otherwise stop.
3. ``u = U(c2) / U(c1)``: ``L3 = 0.5`` if ``u >= 2``; ``0.5 (u - 1.3) / 0.7`` if ``1.3 <= u < 2``;
   otherwise stop.
4. ``L4 = 0.4 T(k of c2) + 0.6 min(J(c1, c2), 0.03) / 0.03``.

Published quirks kept on purpose: transition phrases match as plain substrings (``"so"`` inside
``"also"``); ``U`` keeps stopwords (the reference's docstring says otherwise, its code keeps them).

**Individual rewards** (``reward_mode="independent"``; range 0 to 3; not in the paper; rubric in
:mod:`llm_coop_envs.writing`): ``summary``: 8 to 64 words, grounded in the post (weight 1.5) and
covering it (1.0): a concise, faithful summary. ``elaboration``: 32 to 256 words, grounding 0.5,
coverage 0.5, diversity 1.0, transitions 0.5.

**Breakdown** (``infos[agent]["breakdown"]``): ``level1``..``level4``, ``transition_part``,
``jaccard_part``, ``total``, ``stopped_at`` (first failed level, 0 if none), the statistics ``rho``,
``unique_ratio``, ``transition_categories``, ``jaccard``, per agent ``<agent>_tokens``,
``<agent>_chars``, ``<agent>_individual``, and the paper's normalised metrics: ``structure`` =
(L1+L2+L3)/2, ``style`` = jaccard part / 0.6, ``coherence`` = transition part / 0.4, ``return`` = total / 3.

**Episode end**: truncation after ``max_turns`` turns (default 1, as in the paper). With
``max_turns > 1`` each agent's next prompt holds its own history plus feedback on the joint score; the
episode terminates early when ``success_threshold`` is set and reached.

**Arguments**

=====================  ===========  =======================================================================
argument               default      meaning
=====================  ===========  =======================================================================
``dataset``            "bundled"    "bundled" (80 original posts: 60 train, 20 test), a ``.json``/``.jsonl``
                                    path (records: ``text`` required, ``task_id`` and ``split`` optional;
                                    other field via ``text_field``), or ``"trl-lib/tldr"`` (field
                                    ``prompt``, splits train/test, trailing ``TL;DR:`` removed)
``split``              "train"      split drawn by ``reset()`` without options
``max_rows``           1000         rows per split read from the Hub (the paper trains on 1000)
``text_field``         None         field holding the text in a local file or an unknown Hub dataset
``reward_mode``        "joint"      "joint" or "independent"
``max_turns``          1            turn limit
``success_threshold``  None         joint reward that terminates a multi-turn episode as solved
``max_action_chars``   16384        longest accepted action
``render_mode``        None         None, "ansi" (render() returns text) or "human" (prints it)
=====================  ===========  =======================================================================

**Example**::

    from llm_coop_envs import make
    env = make("coop_writing-v0")
    observations, infos = env.reset(seed=0)
    actions = {agent: "A short text written by a policy for this post." for agent in env.agents}
    observations, rewards, terminations, truncations, infos = env.step(actions)
    print(rewards, infos["summary"]["breakdown"]["return"])

**Version history**: v0: initial release.
"""

from __future__ import annotations

from typing import Any

from llm_coop_envs.datasets import Record
from llm_coop_envs.writing import (
    HubTextSource,
    OwnTextRubric,
    WritingEnv,
    finish_levels,
    jaccard,
    tokens,
    transition_categories_present,
    transition_scale,
    unique_words,
)

__all__ = ["SummarisationEnv", "summarisation_levels"]

HUB_SOURCES = {"trl-lib/tldr": HubTextSource(text_field="prompt", splits=("train", "test"), strip_suffix="TL;DR:")}


def summarisation_levels(summary: str, elaboration: str) -> dict[str, Any]:
    """The published TLDR reward of (paragraph 1, paragraph 2), level by level (see module docstring)."""
    stats: dict[str, Any] = {"rho": 0.0, "unique_ratio": 0.0, "transition_categories": 0, "jaccard": 0.0}
    levels: dict[str, float] = {}
    if not (8 <= tokens(summary) <= 256 and 8 <= tokens(elaboration) <= 256):
        return finish_levels(levels, stats)
    levels["level1"] = 0.5
    rho = stats["rho"] = len(elaboration) / len(summary)
    if 1.6 <= rho <= 3.2:
        levels["level2"] = 1.0
    elif 1.1 <= rho < 1.6:
        levels["level2"] = (rho - 1.1) / 0.5
    elif 3.2 < rho <= 5.0:
        levels["level2"] = 1.0 - (rho - 3.2) / 1.8
    else:
        return finish_levels(levels, stats)
    u = stats["unique_ratio"] = unique_words(elaboration) / unique_words(summary) if unique_words(summary) else 0.0
    if u >= 2.0:
        levels["level3"] = 0.5
    elif 1.3 <= u < 2.0:
        levels["level3"] = 0.5 * (u - 1.3) / 0.7
    else:
        return finish_levels(levels, stats)
    k = stats["transition_categories"] = len(transition_categories_present(elaboration))
    similarity = stats["jaccard"] = jaccard(summary, elaboration)
    levels["transition_part"] = 0.4 * transition_scale(k)
    levels["jaccard_part"] = 0.6 * min(similarity, 0.03) / 0.03
    return finish_levels(levels, stats)


def _post_text(record: Record) -> str:
    return f"SUBREDDIT: r/{record['subreddit']}\nTITLE: {record['title']}\nPOST: {record['post']}"


class SummarisationEnv(WritingEnv):
    """Two-paragraph cooperative summarisation (see the module docstring)."""

    roles = ("summary", "elaboration")
    metadata = {"name": "coop_writing_v0", "render_modes": ["ansi", "human"], "is_parallelizable": True}
    instructions = {
        "summary": (
            "You and a partner write a two-paragraph summary of the forum post below. You write the first "
            "paragraph: a concise summary of the post's main point in one to three sentences. Your partner "
            "writes the detailed second paragraph, so do not write it. Output only your paragraph."
        ),
        "elaboration": (
            "You and a partner write a two-paragraph summary of the forum post below. Your partner writes a "
            "concise first paragraph. You write the second paragraph: a more detailed summary of the post that "
            "uses more unique words than a short summary would and links its ideas with a few transition "
            "words (for example 'moreover', 'however', 'as a result'). Output only your paragraph."
        ),
    }
    cues = {"summary": "Concise summary:", "elaboration": "Detailed summary:"}
    handoff_ratio = 2.4  # the middle of the level-2 length-ratio band
    handoff_words = (8, 256)  # the level-1 length gate
    single_instructions = (
        "Write a two-paragraph summary of the forum post below. First paragraph: a concise summary of the "
        "post's main point in one to three sentences. Second paragraph: a more detailed summary that uses more "
        "unique words and links its ideas with a few transition words (for example 'moreover', 'however', "
        "'as a result'). Put a line holding only --- between the two paragraphs. Output only the two paragraphs."
    )
    single_cue = "Summary:"
    bundled_file = "posts.jsonl"
    bundled_text = staticmethod(_post_text)
    hub_sources = HUB_SOURCES
    rubrics = {
        "summary": OwnTextRubric(8, 64, grounding=1.5, coverage=1.0, diversity=0.0, transitions=0.0),
        "elaboration": OwnTextRubric(32, 256, grounding=0.5, coverage=0.5, diversity=1.0, transitions=0.5),
    }

    def joint_levels(self, first: str, second: str) -> dict[str, Any]:
        return summarisation_levels(first, second)
