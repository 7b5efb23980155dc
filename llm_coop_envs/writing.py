"""Shared pieces of the cooperative writing envs: text statistics, the published reward terms, rubrics.

Notation follows the MAGRPO paper's writing rewards (arXiv 2508.04652):

* ``tok(x)``: number of whitespace-separated tokens, ``len(x)``: number of characters.
* ``W(x)``: set of lower-cased ``\\b\\w+\\b`` words; ``U(x) = |W(x)|`` (stopwords are NOT removed here).
* ``J(x, y)``: Jaccard similarity of ``W(x)`` and ``W(y)`` after removing the stopwords of
  ``data/writing_lexicon.json``; ``1.0`` when both sets are empty.
* Transition categories (12 of them, in the lexicon): a category is present when any of its phrases
  occurs in the lower-cased text as a plain substring. There are no word boundaries, so ``"so"``
  matches inside ``"also"``: this quirk is part of the published reward and is kept on purpose.
  ``T(k) = 0`` if ``k = 0`` else ``min(0.4 + min(0.05 (k - 1), 0.6), 1.0)``.

Individual rewards (``reward_mode="independent"``) are NOT part of the paper. Each agent is scored on
its own text and the source text only, with an :class:`OwnTextRubric` (range 0 to 3, like the joint
reward): zero outside the role's length band, else ``0.5 + w_g * grounding + w_c * coverage +
w_d * diversity + w_t * T(k)``, the weights summing to 2.5, where

* grounding = share of the text's content words (stopwords removed) that occur in the source;
* coverage = share of the source's content words the text mentions, divided by 0.5 and capped at 1;
* diversity = ``U(x) / tok(x)`` divided by 0.7 and capped at 1 (type/token ratio);
* ``T(k)`` as above, on the agent's own text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from llm_coop_envs.core import CoopParallelEnv, Score, Task, TaskSet, Turn
from llm_coop_envs.datasets import (
    DatasetError,
    Record,
    build_task_set,
    hub_rows,
    is_local_path,
    read_bundled,
    read_local,
    require_field,
)

__all__ = [
    "HubTextSource",
    "OwnTextRubric",
    "WritingEnv",
    "content_words",
    "finish_levels",
    "jaccard",
    "load_writing_tasks",
    "normalised_writing_metrics",
    "own_text_reward",
    "tokens",
    "transition_categories_present",
    "transition_scale",
    "unique_words",
    "words",
]

_WORD = re.compile(r"\b\w+\b")


@cache
def _lexicon() -> tuple[frozenset[str], tuple[tuple[str, tuple[str, ...]], ...]]:
    text = resources.files("llm_coop_envs").joinpath("data/writing_lexicon.json").read_text(encoding="utf-8")
    data = json.loads(text)
    categories = tuple((name, tuple(phrases)) for name, phrases in data["transition_categories"].items())
    return frozenset(data["stopwords"]), categories


def tokens(text: str) -> int:
    """``tok(x)``: the number of whitespace-separated tokens."""
    return len(text.split())


def words(text: str) -> set[str]:
    """``W(x)``: the set of lower-cased ``\\b\\w+\\b`` words."""
    return set(_WORD.findall(text.lower()))


def unique_words(text: str) -> int:
    """``U(x) = |W(x)|`` (stopwords kept)."""
    return len(words(text))


def content_words(text: str) -> set[str]:
    """``W(x)`` minus the lexicon's stopwords."""
    return words(text) - _lexicon()[0]


def jaccard(first: str, second: str) -> float:
    """``J(x, y)`` on stopword-free word sets; 1.0 when both are empty."""
    a, b = content_words(first), content_words(second)
    union = a | b
    return 1.0 if not union else len(a & b) / len(union)


def transition_categories_present(text: str) -> list[str]:
    """Names of the transition categories with a phrase occurring as a plain substring (quirk kept)."""
    lowered = text.lower()
    return [name for name, phrases in _lexicon()[1] if any(phrase in lowered for phrase in phrases)]


def transition_scale(k: int) -> float:
    """``T(k)``: 0 for no category, 0.4 for one, +0.05 per extra category, at most 1.0."""
    return 0.0 if k == 0 else min(0.4 + min(0.05 * (k - 1), 0.6), 1.0)


@dataclass(frozen=True)
class OwnTextRubric:
    """Weights of an individual (independent-mode) reward; see the module docstring."""

    min_tokens: int
    max_tokens: int
    grounding: float
    coverage: float
    diversity: float
    transitions: float

    def __post_init__(self) -> None:
        total = self.grounding + self.coverage + self.diversity + self.transitions
        if abs(total - 2.5) > 1e-9:
            raise ValueError(f"rubric weights must sum to 2.5, got {total}")


def own_text_reward(text: str, source: str, rubric: OwnTextRubric) -> float:
    """An agent's individual reward for ``text`` written from ``source`` (range 0 to 3)."""
    n_tokens = tokens(text)
    if not rubric.min_tokens <= n_tokens <= rubric.max_tokens:
        return 0.0
    own, src = content_words(text), content_words(source)
    grounding = len(own & src) / len(own) if own else 0.0
    coverage = min(len(own & src) / len(src) / 0.5, 1.0) if src else 0.0
    diversity = min(unique_words(text) / n_tokens / 0.7, 1.0)
    transitions = transition_scale(len(transition_categories_present(text)))
    return (
        0.5
        + rubric.grounding * grounding
        + rubric.coverage * coverage
        + rubric.diversity * diversity
        + rubric.transitions * transitions
    )


def normalised_writing_metrics(levels: Mapping[str, float]) -> dict[str, float]:
    """The paper's reported metrics as fractions: structure, style, coherence, return."""
    return {
        "structure": (levels["level1"] + levels["level2"] + levels["level3"]) / 2.0,
        "style": levels["jaccard_part"] / 0.6,
        "coherence": levels["transition_part"] / 0.4,
        "return": sum(levels[k] for k in ("level1", "level2", "level3", "jaccard_part", "transition_part")) / 3.0,
    }


class WritingEnv(CoopParallelEnv):
    """Base of the two-agent writing envs: two texts from one source text, one joint score.

    Subclasses set ``roles``, ``instructions`` (role -> system text), ``cues`` (role -> the line that
    ends the user message), ``rubrics`` (role -> :class:`OwnTextRubric`), where their data comes from
    (``bundled_file``, ``bundled_text``, ``hub_sources``) and implement ``joint_levels``.
    """

    instructions: Mapping[str, str] = {}
    cues: Mapping[str, str] = {}
    rubrics: Mapping[str, OwnTextRubric] = {}
    handoff_ratio: float = 1.0
    """Agent 2's target length as a multiple of agent 1's words in the sequential protocol (the middle of the
    reward's length-ratio band)."""
    handoff_words: tuple[int, int] = (1, 10_000)
    """The word range agent 2's target length is clamped to (the reward's length gate)."""
    bundled_file: str = ""
    hub_sources: Mapping[str, HubTextSource] = {}

    @staticmethod
    def bundled_text(record: Record) -> str:
        """The source text of one record of ``bundled_file``."""
        raise NotImplementedError

    def __init__(
        self,
        dataset: str = "bundled",
        *,
        text_field: str | None = None,
        max_rows: int | None = 1000,
        success_threshold: float | None = None,
        **kwargs: Any,
    ) -> None:
        tasks = load_writing_tasks(
            dataset,
            bundled_file=self.bundled_file,
            bundled_text=self.bundled_text,
            known_hub=self.hub_sources,
            text_field=text_field,
            max_rows=max_rows,
        )
        super().__init__(tasks, **kwargs)
        self.dataset = dataset
        if success_threshold is not None and not 0.0 < success_threshold <= 3.0:
            raise ValueError(f"success_threshold must be None or in (0, 3], got {success_threshold!r}")
        self.success_threshold = success_threshold

    def joint_levels(self, first: str, second: str) -> dict[str, Any]:
        """The published gated levels for (agent 1 text, agent 2 text)."""
        raise NotImplementedError

    def role_instructions(self, agent: str) -> str:
        return self.instructions[agent]

    def task_message(self, task: Task, agent: str) -> str:
        return f"{task.fields['text']}\n\n{self.cues[agent]}"

    def score(self, task: Task, actions: Mapping[str, str]) -> Score:
        first_agent, second_agent = self.roles
        first, second = actions[first_agent], actions[second_agent]
        levels = self.joint_levels(first, second)
        joint = float(levels["total"])
        individual = {
            agent: own_text_reward(actions[agent], task.fields["text"], self.rubrics[agent]) for agent in self.roles
        }
        breakdown = {**levels, **normalised_writing_metrics(levels)}
        for agent in self.roles:
            breakdown[f"{agent}_tokens"] = tokens(actions[agent])
            breakdown[f"{agent}_chars"] = len(actions[agent])
            breakdown[f"{agent}_individual"] = individual[agent]
        solved = self.success_threshold is not None and joint >= self.success_threshold
        return Score(joint=joint, individual=individual, breakdown=breakdown, solved=solved)

    def feedback_message(self, task: Task, agent: str, history: tuple[Turn, ...]) -> str:
        last = history[-1]
        b = last.score.breakdown
        return (
            f"Feedback on the joint text: reward {last.score.joint:.2f} of 3.00 "
            f"(structure {b['structure']:.0%}, style {b['style']:.0%}, coherence {b['coherence']:.0%}). "
            f"Your part had {b[f'{agent}_tokens']} words and your co-writer's had "
            f"{b[f'{self._partner(agent)}_tokens']}.\n"
            f"Revise your part and output only your text.\n\n{self.cues[agent]}"
        )

    def handoff_message(self, first_text: str) -> str:
        target = round(self.handoff_ratio * len(first_text.split()))
        target = min(max(target, self.handoff_words[0]), self.handoff_words[1])
        return f"Your partner already wrote the first part:\n\n{first_text.strip()}\n\nWrite about {target} words."

    def _partner(self, agent: str) -> str:
        return next(other for other in self.roles if other != agent)


_LEVELS = ("level1", "level2", "level3")


def finish_levels(levels: dict[str, float], stats: dict[str, Any]) -> dict[str, Any]:
    """Complete a gated reward: levels not reached count 0; ``total`` and ``stopped_at`` are added.

    ``levels`` holds every level that was reached (``level1``..``level3``, and ``transition_part`` plus
    ``jaccard_part`` for level 4). ``stopped_at`` is the 1-based level that failed, 0 if none did.
    """
    stopped_at = next((i for i, name in enumerate(_LEVELS, start=1) if name not in levels), 0)
    full = {name: float(levels.get(name, 0.0)) for name in (*_LEVELS, "transition_part", "jaccard_part")}
    full["level4"] = full["transition_part"] + full["jaccard_part"]
    full["total"] = full["level1"] + full["level2"] + full["level3"] + full["level4"]
    return {**stats, **full, "stopped_at": stopped_at}


@dataclass(frozen=True)
class HubTextSource:
    """How to read one known Hub dataset: the text field, the splits, and a prefix to strip."""

    text_field: str
    splits: tuple[str, ...]
    strip_suffix: str = ""


def load_writing_tasks(
    dataset: str,
    *,
    bundled_file: str,
    bundled_text: Callable[[Record], str],
    known_hub: Mapping[str, HubTextSource],
    text_field: str | None,
    max_rows: int | None,
) -> TaskSet:
    """Tasks with one ``text`` field each, from the bundled file, a local file or the Hub."""
    if dataset == "bundled":
        records = read_bundled(bundled_file)
        return build_task_set("bundled", records, lambda r, i, w: _task(r, i, w, bundled_text(r)))
    if is_local_path(dataset):
        field = text_field or "text"
        records = read_local(dataset)
        return build_task_set(dataset, records, lambda r, i, w: _task(r, i, w, require_field(r, field, w)))
    source = known_hub.get(dataset)
    if source is None and text_field is None:
        raise DatasetError(
            f"unknown dataset {dataset!r}: use 'bundled', a .json/.jsonl path, one of {sorted(known_hub)}, "
            "or another Hub id together with text_field=..."
        )
    source = source or HubTextSource(text_field=str(text_field), splits=("train", "test"))
    tasks = []
    for split in source.splits:
        for index, row in enumerate(hub_rows(dataset, split, max_rows)):
            text = require_field(row, text_field or source.text_field, f"{dataset}[{split}][{index}]")
            text = text.rstrip()
            if source.strip_suffix and text.endswith(source.strip_suffix):
                text = text[: -len(source.strip_suffix)].rstrip()
            tasks.append(Task(task_id=f"{split}/{index}", split=split, fields={"text": text}))
    return TaskSet(dataset, tasks)


def _task(record: Record, index: int, where: str, text: str) -> Task:
    task_id = record.get("task_id", f"task-{index:05d}")
    split = record.get("split", "train")
    if not isinstance(task_id, str) or not isinstance(split, str):
        raise DatasetError(f"{where}: 'task_id' and 'split' must be strings")
    if not text.strip():
        raise DatasetError(f"{where}: the text is empty")
    return Task(
        task_id=task_id,
        split=split,
        fields={**{k: v for k, v in record.items() if k not in ("task_id", "split")}, "text": text},
    )
