"""From transcripts to metrics, and re-scoring a transcript with the current environment code.

Metrics of one episode are the normalised components its env reports in the final turn's breakdown
(``return`` always; writing: ``structure``, ``style``, ``coherence``; coding: ``structure``, ``syntax``,
``tests``, ``cooperation``). :func:`aggregate` averages them over the samples of each (seed, task), then
over tasks for each seed, and adds the unbiased ``pass@k`` for envs that run tests.

:func:`rescore` is the verification hook ``rescore(entry, transcript) -> RescoreResult``: it rebuilds the
env from the entry's recorded spec (refusing when the current registry builds a different spec), scores
every turn's joint action again (code runs in the sandbox, batched through ``env.score_many`` when the env
has it), and raises :class:`RescoreError` naming the record or metric that differs from what was stored.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from llm_coop_envs import make
from llm_coop_envs.core import CoopParallelEnv, Score, Task
from llm_coop_leaderboard.stats import pass_at_k
from llm_coop_leaderboard.transcripts import Transcript, TranscriptRecord, TurnRecord

__all__ = [
    "COMPONENTS",
    "Aggregate",
    "RescoreError",
    "RescoreResult",
    "aggregate",
    "env_for_entry",
    "episode_metrics",
    "passed_all_tests",
    "rescore",
]

COMPONENTS = ("return", "structure", "style", "coherence", "syntax", "tests", "cooperation")
"""Normalised metrics taken from a breakdown when present (fractions of their maxima)."""
_TOLERANCE = 1e-9


class RescoreError(ValueError):
    """A transcript that does not reproduce its entry; the message names the record or metric."""


def episode_metrics(breakdown: Mapping[str, Any]) -> dict[str, float]:
    """The normalised components found in ``breakdown`` (``return`` is required)."""
    if "return" not in breakdown:
        raise KeyError("breakdown has no 'return' (normalised joint return)")
    return {name: float(breakdown[name]) for name in COMPONENTS if name in breakdown}


def passed_all_tests(breakdown: Mapping[str, Any]) -> bool | None:
    """Whether every test passed (``None`` for envs without tests)."""
    if "tests_passed" in breakdown and "tests_total" in breakdown:
        return bool(breakdown["tests_total"] > 0 and breakdown["tests_passed"] == breakdown["tests_total"])
    if "tests" in breakdown:
        return bool(breakdown["tests"] >= 1.0)
    return None


@dataclass(frozen=True)
class Aggregate:
    """``per_seed[seed][metric]`` and ``per_task[metric][seed][task_id]`` (seeds as strings, like JSON)."""

    per_seed: dict[str, dict[str, float]]
    per_task: dict[str, dict[str, dict[str, float]]]


def _cell_metrics(records: Sequence[TranscriptRecord], ks: Sequence[int]) -> dict[str, float]:
    per_record = [episode_metrics(record.final.breakdown) for record in records]
    names = sorted(set.intersection(*(set(m) for m in per_record)))
    cell = {name: math.fsum(m[name] for m in per_record) / len(per_record) for name in names}
    passes = [passed_all_tests(record.final.breakdown) for record in records]
    if all(p is not None for p in passes):
        for k in ks:
            cell[f"pass@{k}"] = pass_at_k(len(passes), sum(bool(p) for p in passes), k)
    return cell


def _timing(records: Sequence[TranscriptRecord]) -> dict[str, float]:
    result = {}
    for name in ("tokens_per_s", "response_time_s"):
        values = [record.timing.get(name) for record in records]
        if values and all(isinstance(v, (int, float)) for v in values):
            result[name] = math.fsum(float(v) for v in values) / len(values)  # type: ignore[arg-type]
    return result


def aggregate(records: Iterable[TranscriptRecord], pass_ks: Sequence[int] = (1,)) -> Aggregate:
    """Per-seed and per-task metrics of ``records`` (samples averaged per task, tasks per seed).

    ``pass@k`` is reported for each ``k`` in ``pass_ks`` not above the smallest number of samples per task.
    """
    cells: dict[int, dict[str, list[TranscriptRecord]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        cells[record.seed][record.task_id].append(record)
    if not cells:
        raise ValueError("no records to aggregate")
    fewest = min(len(samples) for by_task in cells.values() for samples in by_task.values())
    ks = [k for k in pass_ks if 1 <= k <= fewest]
    per_task: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    per_seed: dict[str, dict[str, float]] = {}
    for seed in sorted(cells):
        by_task = {task: _cell_metrics(samples, ks) for task, samples in sorted(cells[seed].items())}
        names = sorted(set.intersection(*(set(m) for m in by_task.values())))
        for name in names:
            per_task[name][str(seed)] = {task: metrics[name] for task, metrics in by_task.items()}
        per_seed[str(seed)] = {name: math.fsum(m[name] for m in by_task.values()) / len(by_task) for name in names}
        per_seed[str(seed)].update(_timing([r for samples in cells[seed].values() for r in samples]))
    return Aggregate(per_seed=per_seed, per_task=dict(per_task))


# ----- re-scoring --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RescoreResult:
    """The aggregate recomputed from re-scored turns, the number of records, and the sandbox used."""

    aggregate: Aggregate
    records: int
    sandbox_backend: str | None


def env_for_entry(entry: Mapping[str, Any]) -> CoopParallelEnv:
    """The env an entry was evaluated on, built by the current registry; its spec hash must match."""
    spec = entry["env"]["spec"]
    env = make(spec["id"], **spec["kwargs"])
    if env.spec.spec_hash() != entry["env"]["spec_hash"]:
        raise RescoreError(
            f"the current registry builds {spec['id']!r} with spec hash {env.spec.spec_hash()}, the entry "
            f"records {entry['env']['spec_hash']}: the env changed, so this entry cannot be re-scored"
        )
    return env  # type: ignore[no-any-return]


def _score_all(env: CoopParallelEnv, items: list[tuple[Task, Mapping[str, str]]]) -> list[Score]:
    score_many = getattr(env, "score_many", None)
    if callable(score_many):
        return list(score_many(items))
    return [env.score(task, actions) for task, actions in items]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=_TOLERANCE, abs_tol=_TOLERANCE)


def _check_turn(where: str, stored: TurnRecord, score: Score) -> None:
    if not _close(stored.joint_reward, score.joint):
        raise RescoreError(f"{where}: stored joint reward {stored.joint_reward!r}, re-scored {score.joint!r}")
    for agent, value in score.individual.items():
        if agent not in stored.individual_rewards or not _close(stored.individual_rewards[agent], value):
            raise RescoreError(f"{where}: stored individual reward of {agent!r} differs from the re-scored {value!r}")
    stored_metrics, fresh = episode_metrics(stored.breakdown), episode_metrics(score.breakdown)
    for name, value in fresh.items():
        if name not in stored_metrics or not _close(stored_metrics[name], value):
            raise RescoreError(f"{where}: stored {name!r} {stored_metrics.get(name)!r}, re-scored {value!r}")


def _rescored_records(env: CoopParallelEnv, transcript: Transcript) -> list[TranscriptRecord]:
    items: list[tuple[Task, Mapping[str, str]]] = []
    for record in transcript.records:
        task = env.tasks.get(record.task_id)
        items.extend((task, turn.actions) for turn in record.turns)
    scores = iter(_score_all(env, items))
    fresh_records = []
    for record in transcript.records:
        turns = []
        for number, turn in enumerate(record.turns, start=1):
            score = next(scores)
            where = f"record seed={record.seed} task={record.task_id} sample={record.sample} turn={number}"
            _check_turn(where, turn, score)
            fresh = TurnRecord(turn.actions, score.joint, dict(score.individual), dict(score.breakdown))
            turns.append(fresh)
        fresh_records.append(replace(record, turns=tuple(turns)))
    return fresh_records


def _compare(entry: Mapping[str, Any], fresh: Aggregate) -> None:
    stored_seed, stored_task = entry["metrics"]["per_seed"], entry.get("per_task", {})
    if sorted(fresh.per_seed) != sorted(stored_seed):
        raise RescoreError(f"the transcript holds seeds {sorted(fresh.per_seed)}, the entry {sorted(stored_seed)}")
    for seed, metrics in fresh.per_seed.items():
        for name, value in metrics.items():
            if name in ("tokens_per_s", "response_time_s"):
                continue  # timings are measured, not scored
            stored = stored_seed[seed].get(name)
            if stored is None or not _close(stored, value):
                raise RescoreError(f"$.metrics.per_seed.{seed}.{name}: stored {stored!r}, re-scored {value!r}")
    for name, by_seed in stored_task.items():
        if by_seed != fresh.per_task.get(name, {}) and not _all_close(by_seed, fresh.per_task.get(name, {})):
            raise RescoreError(f"$.per_task.{name}: differs from the re-scored transcript")


def _all_close(a: Mapping[str, Mapping[str, float]], b: Mapping[str, Mapping[str, float]]) -> bool:
    if sorted(a) != sorted(b):
        return False
    return all(sorted(a[s]) == sorted(b[s]) and all(_close(a[s][t], b[s][t]) for t in a[s]) for s in a)


def rescore(entry: Mapping[str, Any], transcript: Transcript, env: CoopParallelEnv | None = None) -> RescoreResult:
    """Re-score every turn of ``transcript`` and check the entry's metrics; raise :class:`RescoreError`."""
    if transcript.env_id != entry["env"]["id"] or transcript.spec_hash != entry["env"]["spec_hash"]:
        raise RescoreError("the transcript header names a different env id or spec hash than the entry")
    env = env or env_for_entry(entry)
    records = _rescored_records(env, transcript)
    first_seed = entry["metrics"]["per_seed"][str(entry["seeds"][0])]
    fresh = aggregate(records, pass_ks=sorted(int(name[5:]) for name in first_seed if name.startswith("pass@")))
    _compare(entry, fresh)
    sandbox = getattr(env, "sandbox", None)
    return RescoreResult(aggregate=fresh, records=len(records), sandbox_backend=getattr(sandbox, "backend", None))
