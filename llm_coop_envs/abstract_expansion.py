"""``coop_abstract_expansion-v0``: two agents expand a paper abstract into an introduction together.

The MAGRPO paper's arXiv task (arXiv 2508.04652, docs/rewards.md), with the published reward at
its paper-era thresholds (the authors changed L2 after publication; v0 keeps the published one).

**Agents** (paper order): ``background`` (agent 1) writes the background and motivation part of the
introduction; ``method`` (agent 2) writes the method and implications part. Each is told that the other
covers the other part. They write at the same time; the joint output is part 1 followed by part 2.

**Observation**: ``{"prompt": str}``: the role instructions, a blank line, ``ABSTRACT: ...`` and a cue
line. ``infos[agent]["messages"]`` holds the same as a system + user chat.

**Action**: the agent's part, a string of at most ``max_action_chars`` characters.

**Joint reward** (range 0 to 3.0). ``c1`` = background, ``c2`` = method; notation in
:mod:`llm_coop_envs.writing`; gated levels (a level that fails ends the sum):

1. ``L1 = 0.5`` if ``128 <= tok(c1) <= 256`` and ``128 <= tok(c2) <= 256``; otherwise the reward is 0.
2. ``rho = len(c2) / len(c1)``: ``L2 = 1`` if ``1.0 <= rho <= 1.3``; ``(rho - 0.8) / 0.2`` if
   ``0.8 <= rho < 1.0``; ``1 - (rho - 1.3) / 0.2`` if ``1.3 < rho <= 1.5``; otherwise stop.
3. ``u = U(c2) / U(c1)``: ``L3 = 0.5`` if ``0.7 <= u <= 1.3``; ``0.5 (u - 0.5) / 0.2`` if
   ``0.5 <= u < 0.7``; ``0.5 (1 - (u - 1.3) / 0.4)`` if ``1.3 < u <= 1.7``; otherwise stop.
4. ``L4 = 0.4 T(k of c1 + "\\n\\n" + c2) + 0.6 min(J(c1, c2), 0.23) / 0.23``. The two parts are joined
   by a blank line before transitions are counted, so no phrase is formed across the seam.

Quirks kept on purpose: substring matching of transition phrases; ``U`` keeps stopwords.

**Individual rewards** (``reward_mode="independent"``; range 0 to 3; not in the paper): both agents use
the same rubric on their own part: 128 to 256 words, grounding in the abstract 1.0, coverage 0.5,
diversity 0.5, transitions 0.5 (see :mod:`llm_coop_envs.writing`).

**Breakdown**: as for ``coop_writing-v0``: ``level1``..``level4``, ``transition_part``,
``jaccard_part``, ``total``, ``stopped_at``, ``rho``, ``unique_ratio``, ``transition_categories``,
``jaccard``, ``<agent>_tokens``, ``<agent>_chars``, ``<agent>_individual``, ``structure``, ``style``,
``coherence``, ``return``.

**Episode end**: truncation after ``max_turns`` (default 1); with ``success_threshold`` set, a
multi-turn episode terminates once the joint reward reaches it.

**Arguments**

=====================  ===========  =======================================================================
argument               default      meaning
=====================  ===========  =======================================================================
``dataset``            "bundled"    "bundled" (64 original abstracts: 48 train, 16 test), a ``.json`` /
                                    ``.jsonl`` path (``text`` required, ``task_id``/``split`` optional), or
                                    ``"OpenMLRL/arXiv_abstract"`` (field ``abstract_text``, splits
                                    train/val/test)
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
    env = make("coop_abstract_expansion-v0")
    observations, infos = env.reset(seed=0, options={"split": "test", "index": 0})
    print(observations["background"]["prompt"])

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

__all__ = ["AbstractExpansionEnv", "abstract_expansion_levels"]

HUB_SOURCES = {"OpenMLRL/arXiv_abstract": HubTextSource(text_field="abstract_text", splits=("train", "val", "test"))}


def abstract_expansion_levels(background: str, method: str) -> dict[str, Any]:
    """The published arXiv reward of (part 1, part 2), level by level (see module docstring)."""
    stats: dict[str, Any] = {"rho": 0.0, "unique_ratio": 0.0, "transition_categories": 0, "jaccard": 0.0}
    levels: dict[str, float] = {}
    if not (128 <= tokens(background) <= 256 and 128 <= tokens(method) <= 256):
        return finish_levels(levels, stats)
    levels["level1"] = 0.5
    rho = stats["rho"] = len(method) / len(background)
    if 1.0 <= rho <= 1.3:
        levels["level2"] = 1.0
    elif 0.8 <= rho < 1.0:
        levels["level2"] = (rho - 0.8) / 0.2
    elif 1.3 < rho <= 1.5:
        levels["level2"] = 1.0 - (rho - 1.3) / 0.2
    else:
        return finish_levels(levels, stats)
    u = stats["unique_ratio"] = unique_words(method) / unique_words(background)
    if 0.7 <= u <= 1.3:
        levels["level3"] = 0.5
    elif 0.5 <= u < 0.7:
        levels["level3"] = 0.5 * (u - 0.5) / 0.2
    elif 1.3 < u <= 1.7:
        levels["level3"] = 0.5 * (1.0 - (u - 1.3) / 0.4)
    else:
        return finish_levels(levels, stats)
    k = stats["transition_categories"] = len(transition_categories_present(f"{background}\n\n{method}"))
    similarity = stats["jaccard"] = jaccard(background, method)
    levels["transition_part"] = 0.4 * transition_scale(k)
    levels["jaccard_part"] = 0.6 * min(similarity, 0.23) / 0.23
    return finish_levels(levels, stats)


def _abstract_text(record: Record) -> str:
    return f"TITLE: {record['title']}\nABSTRACT: {record['abstract']}"


class AbstractExpansionEnv(WritingEnv):
    """Cooperative expansion of an abstract into an introduction (see the module docstring)."""

    roles = ("background", "method")
    metadata = {"name": "coop_abstract_expansion_v0", "render_modes": ["ansi", "human"], "is_parallelizable": True}
    instructions = {
        "background": (
            "You and a co-author turn the paper abstract below into an introduction. You write the first "
            "part: the background and motivation (the problem, why it matters, what earlier work leaves open), "
            "in about 150 to 250 words. Your co-author writes the method and implications part, so do not "
            "describe the method or results. Output only your part."
        ),
        "method": (
            "You and a co-author turn the paper abstract below into an introduction. Your co-author writes the "
            "background and motivation. You write the second part: the method and its implications (the "
            "approach, the key results and what they mean), in about 150 to 250 words. Do not repeat the "
            "background. Output only your part."
        ),
    }
    cues = {"background": "Background and motivation:", "method": "Method and implications:"}
    handoff_ratio = 1.15  # the middle of the level-2 length-ratio band
    handoff_words = (128, 256)  # the level-1 length gate
    single_instructions = (
        "Turn the paper abstract below into an introduction of two parts. Part one: the background and "
        "motivation (the problem, why it matters, what earlier work leaves open), about 150 to 250 words. Part "
        "two: the method and its implications (the approach, the key results and what they mean), about 150 "
        "to 250 words. Put a line holding only --- between the two parts. Output only the two parts."
    )
    single_cue = "Introduction:"
    bundled_file = "abstracts.jsonl"
    bundled_text = staticmethod(_abstract_text)
    hub_sources = HUB_SOURCES
    rubrics = {
        role: OwnTextRubric(128, 256, grounding=1.0, coverage=0.5, diversity=0.5, transitions=0.5)
        for role in ("background", "method")
    }

    def joint_levels(self, first: str, second: str) -> dict[str, Any]:
        return abstract_expansion_levels(first, second)
