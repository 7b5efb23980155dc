"""Paired comparison of two leaderboard entries on the same split: per seed, and the mean difference with a
stratified bootstrap interval.

Two rows of a leaderboard table carry their own intervals; whether one method beats another is a question
about the *difference*, which is far less noisy when both were evaluated on the same tasks with the same
seeds (a hard task is hard for both). ``compare_entries(a, b)`` takes the score matrices of the two entries
(``per_task[metric][seed][task]``), keeps the seeds they share, subtracts cell by cell and reports:

* per seed: the mean of each entry and their difference (``a - b``);
* the mean difference over every cell with a percentile interval from ``stratified_bootstrap_ci`` (seeds
  resampled per task, the task set fixed), so an interval above 0 means ``a`` separates from ``b`` on this
  split at that confidence;
* on how many seeds ``a`` is ahead.

``a`` *separates* from ``b`` when the interval lies above 0 **and** ``a`` is ahead on every seed. The
second condition matters: resampling seeds per task averages a whole run's luck out across tasks, so with
a few training seeds the interval alone can clear 0 while one run is behind. With one shared seed there is
nothing to resample: the interval has no width and says nothing about seed-to-seed spread, so nothing
separates on one seed (the output says so).

With a training-seed entry (one trained run per seed, sampled with its seed) against an untrained
sampling-seed one, seed ``s`` pairs run ``s`` with the untrained team sampled under seed ``s``: the same
tasks and sampling seed, the training being the difference. ``scale`` multiplies every value (4.0 turns
``coop_coding-v0``'s normalised return into its joint return, whose maximum is 4.0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llm_coop_leaderboard.stats import MIN_INTERVAL_SEEDS, Interval, stratified_bootstrap_ci
from llm_coop_leaderboard.transcripts import Transcript

__all__ = [
    "CompareError",
    "Comparison",
    "FlagRates",
    "compare_entries",
    "compare_turns",
    "flag_rates",
    "format_comparison",
    "format_rates",
]


class CompareError(ValueError):
    """Two entries that cannot be compared cell by cell; the message says why."""


@dataclass(frozen=True)
class Comparison:
    """``a`` against ``b`` on ``metric`` (values multiplied by ``scale``)."""

    a: str
    b: str
    metric: str
    scale: float
    seeds: tuple[int, ...]
    tasks: int
    per_seed: tuple[tuple[int, float, float], ...]  # (seed, mean of a, mean of b)
    difference: Interval  # mean of a - b over every shared (seed, task) cell

    @property
    def seeds_ahead(self) -> int:
        return sum(a > b for _, a, b in self.per_seed)

    @property
    def separates(self) -> bool:
        """At least two shared seeds, the interval of the difference above 0 and ``a`` ahead on every seed."""
        return (
            len(self.seeds) >= MIN_INTERVAL_SEEDS and self.difference.low > 0.0 and self.seeds_ahead == len(self.seeds)
        )

    @property
    def seeds_behind(self) -> int:
        return sum(a < b for _, a, b in self.per_seed)

    @property
    def separates_below(self) -> bool:
        """The mirror of ``separates``: the interval below 0 and ``b`` ahead on every seed."""
        return (
            len(self.seeds) >= MIN_INTERVAL_SEEDS
            and self.difference.high < 0.0
            and self.seeds_behind == len(self.seeds)
        )

    @property
    def verdict(self) -> str:
        """The separation in words, either way round, with the reason when there is none."""
        if len(self.seeds) < MIN_INTERVAL_SEEDS:
            return "one seed: the interval has no width (seeds are resampled), so no separation is claimed"
        if self.separates:
            return "a separates from b"
        if self.separates_below:
            return "b separates from a (a is behind on every seed, the interval below 0)"
        return "no separation (interval reaches 0 or the seeds disagree)"


_SAME = ((("env", "id"), "envs"), (("env", "spec_hash"), "env specs"), (("dataset", "hash"), "datasets"))


def _check_comparable(a: Mapping[str, Any], b: Mapping[str, Any], metric: str) -> None:
    for (section, key), what in (*_SAME, (("dataset", "split"), "splits")):
        if a[section][key] != b[section][key]:
            raise CompareError(f"{a['entry_id']} and {b['entry_id']} are on different {what}")
    for entry in (a, b):
        if metric not in entry.get("per_task", {}):
            raise CompareError(f"{entry['entry_id']} has no per-task scores of {metric!r}")


def _matrix(entry: Mapping[str, Any], metric: str, seeds: Sequence[int]) -> dict[int, dict[str, float]]:
    return {s: dict(entry["per_task"][metric][str(s)]) for s in seeds}


def compare_entries(
    a: Mapping[str, Any], b: Mapping[str, Any], metric: str | None = None, scale: float = 1.0
) -> Comparison:
    """``a`` against ``b`` on their shared seeds and tasks; ``metric`` defaults to ``a``'s primary metric."""
    metric = metric or str(a["metrics"]["primary"])
    _check_comparable(a, b, metric)
    seeds = sorted(set(a["seeds"]) & set(b["seeds"]))
    if not seeds:
        raise CompareError(f"{a['entry_id']} and {b['entry_id']} share no seed")
    cells_a, cells_b = _matrix(a, metric, seeds), _matrix(b, metric, seeds)
    tasks = sorted(cells_a[seeds[0]])
    for s in seeds:
        if sorted(cells_a[s]) != tasks or sorted(cells_b[s]) != tasks:
            raise CompareError(f"{a['entry_id']} and {b['entry_id']} scored different tasks under seed {s}")
    diff = [[scale * (cells_a[s][t] - cells_b[s][t]) for t in tasks] for s in seeds]
    per_seed = tuple((s, _mean(cells_a[s], scale), _mean(cells_b[s], scale)) for s in seeds)
    ids = str(a["entry_id"]), str(b["entry_id"])
    return Comparison(*ids, metric, scale, tuple(seeds), len(tasks), per_seed, stratified_bootstrap_ci(diff, "mean"))


def compare_turns(
    entry: Mapping[str, Any], transcript: Transcript, metric: str | None = None, scale: float = 1.0
) -> Comparison:
    """A multi-turn entry's final turn (``a``) against its first turn (``b``), episode by episode: what the
    turns after feedback changed. Each cell is a (seed, task) mean over samples of ``metric`` in the turn's
    breakdown; an episode that ended after one turn counts the same answer on both sides."""
    metric = metric or str(entry["metrics"]["primary"])
    first: dict[int, dict[str, list[float]]] = {}
    final: dict[int, dict[str, list[float]]] = {}
    for record in transcript.records:
        for side, turn in ((first, record.turns[0]), (final, record.turns[-1])):
            if metric not in turn.breakdown:
                raise CompareError(f"{entry['entry_id']}: turn breakdowns have no {metric!r}")
            side.setdefault(record.seed, {}).setdefault(record.task_id, []).append(float(turn.breakdown[metric]))
    seeds = sorted(first)
    if not seeds:
        raise CompareError(f"{entry['entry_id']}: its transcript has no records")
    tasks = sorted(first[seeds[0]])
    cells_a = {s: {t: sum(v) / len(v) for t, v in final[s].items()} for s in seeds}
    cells_b = {s: {t: sum(v) / len(v) for t, v in first[s].items()} for s in seeds}
    diff = [[scale * (cells_a[s][t] - cells_b[s][t]) for t in tasks] for s in seeds]
    per_seed = tuple((s, _mean(cells_a[s], scale), _mean(cells_b[s], scale)) for s in seeds)
    ids = f"final turn of {entry['entry_id']}", f"turn 1 of {entry['entry_id']}"
    return Comparison(*ids, metric, scale, tuple(seeds), len(tasks), per_seed, stratified_bootstrap_ci(diff, "mean"))


def _mean(cells: Mapping[str, float], scale: float) -> float:
    return scale * sum(cells.values()) / len(cells)


def format_comparison(result: Comparison) -> str:
    """A markdown table per seed and a line with the mean difference and its 95% interval."""
    lines = [
        f"a = {result.a}",
        f"b = {result.b}",
        f"{result.metric} x {result.scale:g}, {result.tasks} tasks, seeds {', '.join(map(str, result.seeds))}",
        "",
        "| seed | a | b | a - b |",
        "|---|---|---|---|",
        *(f"| {s} | {va:.3f} | {vb:.3f} | {va - vb:+.3f} |" for s, va, vb in result.per_seed),
        "",
        f"mean a - b: {result.difference.point:+.3f} [{result.difference.low:+.3f}, {result.difference.high:+.3f}] "
        f"(95% stratified bootstrap); a ahead on {result.seeds_ahead} of {len(result.seeds)} seeds; {result.verdict}",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class FlagRates:
    """How many episodes of each seed had each yes/no breakdown flag set, at one turn of each episode."""

    entry: str
    turn: str  # "first" or "final"
    seeds: tuple[int, ...]
    counts: Mapping[str, Mapping[int, int]]  # flag -> seed -> episodes with the flag set
    episodes: Mapping[int, int]  # seed -> episodes


def flag_rates(entry: Mapping[str, Any], transcript: Transcript, turn: str = "final") -> FlagRates:
    """The share of episodes in which each boolean key of the turn breakdowns is true (``turn``: each
    episode's ``first`` or ``final`` turn), per seed: e.g. how often the coding helper defined ``aux``
    (``aux_defined``) and main called it (``calls_aux``)."""
    if turn not in ("first", "final"):
        raise CompareError(f"turn must be 'first' or 'final', got {turn!r}")
    if not transcript.records:
        raise CompareError(f"{entry['entry_id']}: its transcript has no records")
    counts: dict[str, dict[int, int]] = {}
    episodes: dict[int, int] = {}
    for record in transcript.records:
        breakdown = (record.turns[0] if turn == "first" else record.turns[-1]).breakdown
        episodes[record.seed] = episodes.get(record.seed, 0) + 1
        for key, value in breakdown.items():
            if isinstance(value, bool):
                per_seed = counts.setdefault(key, {})
                per_seed[record.seed] = per_seed.get(record.seed, 0) + int(value)
    seeds = tuple(sorted(episodes))
    full = {key: {s: per_seed.get(s, 0) for s in seeds} for key, per_seed in sorted(counts.items())}
    return FlagRates(str(entry["entry_id"]), turn, seeds, full, episodes)


def format_rates(rates: FlagRates) -> str:
    """A markdown table: each flag's count of episodes per seed and over all seeds, with the share."""
    total = sum(rates.episodes.values())
    lines = [
        f"{rates.entry}: {rates.turn} turn of {total} episodes",
        "",
        "| flag | " + " | ".join(f"seed {s}" for s in rates.seeds) + " | all |",
        "|---|" + "---|" * (len(rates.seeds) + 1),
    ]
    for key, per_seed in rates.counts.items():
        cells = [f"{per_seed[s]} / {rates.episodes[s]}" for s in rates.seeds]
        hits = sum(per_seed.values())
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {hits} / {total} ({100 * hits / total:.0f} %) |")
    return "\n".join(lines)
