"""Resumable evaluations: `llm-coop eval` checkpoints every finished batch, and `--resume` continues from them.

An evaluation is a list of units, one per (seed, batch of ``--batch-tasks`` tasks). After each unit the runner
appends one line to ``<root>/partial/<entry_id>.batches.jsonl``: the unit's transcript records, its task ids,
its wall time and the torch random state after it (CPU, and CUDA when CUDA is in use). A killed evaluation
(Ctrl-C, a lost machine, a session that ends) keeps every finished unit. Run the same command with
``--resume`` and the runner replays the finished units from the file, restores the random state after the
last of them, and plays the rest: the transcript and the entry are those of an evaluation that was never
interrupted (the same texts and scores; only the timings differ). The file is removed once the entry is
written.

The file's first line records what the evaluation is (:func:`fingerprint_fields`: every flag that changes a
text or a score); ``--resume`` with any of them changed is refused and names the field, as is a unit whose
tasks differ from the split's (the dataset changed underneath). Without ``--resume`` an existing batches file
is an error (``--overwrite`` discards it). Units are appended and flushed one at a time, so a process killed
while writing leaves at most a torn last line, which is dropped on resume. ``--heldout`` (a few tasks,
checked against the run's own numbers) keeps no batches file.

The header also records the package version and git commit: a resume under another version, or at a commit
that changes ``baselines/`` or ``llm_coop_envs/`` (what samples and scores), is refused. What the file cannot
see: uncommitted edits, and the weights behind a path. A run directory retrained, or a model replaced at the
same name, between the interruption and ``--resume`` gives a mixed evaluation; the entry's model hashes are
those of the final segment.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from baselines.eval_plan import EvalConfig, EvalError
from llm_coop_leaderboard.entries import changed_files, collect_provenance
from llm_coop_leaderboard.merge import CODE_PATHS
from llm_coop_leaderboard.transcripts import TranscriptRecord

__all__ = ["BATCHES_FORMAT", "FinishedBatches", "batches_path", "fingerprint_fields"]

BATCHES_FORMAT = "llm-coop-eval-batches"
BATCHES_VERSION = 1

_NOT_FINGERPRINTED = ("resume", "overwrite", "progress", "command", "root", "pass_k", "entry_id", "method_name")
"""EvalConfig fields that change neither a text nor a score: how the run is driven, where and under which name
the entry goes, and the pass@k values (computed from the records at the end)."""


def fingerprint_fields(cfg: EvalConfig) -> dict[str, Any]:
    """The flags that decide the evaluation's texts and scores (JSON values)."""
    fields = dataclasses.asdict(cfg)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in fields.items() if k not in _NOT_FINGERPRINTED}


def batches_path(root: Path, entry_id: str) -> Path:
    return root / "partial" / f"{entry_id}.batches.jsonl"


def _encode_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": base64.b64encode(torch.random.get_rng_state().numpy().tobytes()).decode()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return state


def _decode(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def _restore_rng(state: dict[str, Any]) -> None:
    torch.random.set_rng_state(_decode(state["cpu"]))
    if "cuda" in state:
        torch.cuda.set_rng_state_all([_decode(s) for s in state["cuda"]])


@dataclass
class _Unit:
    task_ids: list[str]
    records: list[TranscriptRecord]
    seconds: float
    rng: dict[str, Any]


def _code_version() -> dict[str, Any]:
    provenance = collect_provenance("llm-coop eval", None)
    return {"package_version": provenance["package_version"], "git_commit": provenance["git_commit"]}


def _check_code(path: Path, theirs: dict[str, Any], mine: dict[str, Any]) -> None:
    """The finished batches ran the code that would play the rest: the same package version and, where both
    processes ran in a git checkout, no change under :data:`~llm_coop_leaderboard.merge.CODE_PATHS`."""
    if theirs.get("package_version") != mine["package_version"]:
        raise EvalError(
            f"--resume: {path} was written by llm-coop-envs {theirs.get('package_version')}, this is "
            f"{mine['package_version']}; start over with --overwrite"
        )
    before, now = theirs.get("git_commit"), mine["git_commit"]
    if before is None or now is None or before == now:
        return
    changed = changed_files(before, now, CODE_PATHS)
    if changed is None or changed:
        shown = "cannot be compared in this checkout" if changed is None else "changes " + ", ".join(changed[:5])
        raise EvalError(
            f"--resume: {path} was played at commit {before[:12]}; {before[:12]}..{now[:12]} {shown}; start over "
            "with --overwrite"
        )


def _check_header(path: Path, line: str, expected: dict[str, Any]) -> None:
    """Refuse a file that is not a batches file, one of an evaluation with other flags (named), or one played
    by other code."""
    try:
        header = json.loads(line)
    except json.JSONDecodeError:
        header = None
    if (
        not isinstance(header, dict)
        or header.get("format") != BATCHES_FORMAT
        or header.get("version") != BATCHES_VERSION
    ):
        raise EvalError(f"{path}: not a version-{BATCHES_VERSION} batches file of llm-coop eval")
    theirs, mine = header.get("config") or {}, expected["config"]
    changed = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    if changed:
        were = ", ".join(f"{k}: {theirs.get(k)!r} there, {mine.get(k)!r} now" for k in changed)
        raise EvalError(f"--resume: {path} is another evaluation ({were}); start over with --overwrite")
    _check_code(path, header.get("code") or {}, expected["code"])


def _parse_unit(line: str) -> tuple[tuple[int, int], _Unit]:
    data = json.loads(line)
    records = [TranscriptRecord.from_json(r) for r in data["records"]]
    unit = _Unit([str(t) for t in data["task_ids"]], records, float(data["seconds"]), dict(data["rng"]))
    return (int(data["seed"]), int(data["batch"])), unit


@dataclass
class FinishedBatches:
    """The finished units of one evaluation and the file they are appended to (``path`` None: kept nowhere)."""

    path: Path | None
    units: dict[tuple[int, int], _Unit] = field(default_factory=dict)  # read from the file when it was opened
    replayed_seconds: float = 0.0  # their wall time, spent by the interrupted processes
    _clock: float = field(default_factory=time.perf_counter)  # the last save (or the opening)

    @classmethod
    def disabled(cls) -> FinishedBatches:
        return cls(None)

    @classmethod
    def open(cls, path: Path, cfg: EvalConfig, entry_id: str) -> FinishedBatches:
        """Start a new batches file, or with ``cfg.resume`` continue the one at ``path`` (see the module)."""
        header = {
            "format": BATCHES_FORMAT,
            "version": BATCHES_VERSION,
            "entry_id": entry_id,
            "config": fingerprint_fields(cfg),
            "code": _code_version(),
        }
        if path.exists() and cfg.resume:
            finished = cls._load(path, header)
            print(f"llm-coop eval: resuming {path}: {finished.loaded} finished batches", file=sys.stderr)
            return finished
        if path.exists() and not cfg.overwrite:
            raise EvalError(
                f"{path}: an interrupted evaluation of {entry_id!r} left its finished batches here; pass --resume to "
                "continue it, or --overwrite to start over"
            )
        if cfg.resume:
            print(f"llm-coop eval: --resume: nothing at {path}; starting from the first batch", file=sys.stderr)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(header, sort_keys=True) + "\n", encoding="utf-8")
        return cls(path)

    @classmethod
    def _load(cls, path: Path, expected: dict[str, Any]) -> FinishedBatches:
        lines = path.read_text(encoding="utf-8").splitlines()
        _check_header(path, lines[0] if lines else "", expected)
        finished = cls(path)
        kept = lines[:1]
        for number, line in enumerate(lines[1:], start=2):
            try:
                key, unit = _parse_unit(line)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                if number == len(lines):  # torn by a kill while writing: that batch is played again
                    print(f"llm-coop eval: {path}: dropped a torn last line", file=sys.stderr)
                    break
                raise EvalError(f"{path}, line {number}: not a finished batch; start over with --overwrite") from None
            finished.units[key] = unit
            kept.append(line)
        temporary = path.with_name(path.name + ".tmp")  # whole lines only, so the next append starts a line
        temporary.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        temporary.replace(path)
        finished.replayed_seconds = sum(unit.seconds for unit in finished.units.values())
        return finished

    def replay(self, seed: int, batch: int, task_ids: Sequence[str]) -> list[TranscriptRecord] | None:
        """The records of a finished unit, with the random state after it restored; None if it is not finished."""
        unit = self.units.get((seed, batch))
        if unit is None:
            return None
        if unit.task_ids != list(task_ids):
            raise EvalError(
                f"--resume: {self.path} holds other tasks for seed {seed}, batch {batch} ({unit.task_ids[:3]}... "
                f"against {list(task_ids)[:3]}...): the dataset changed; start over with --overwrite"
            )
        _restore_rng(unit.rng)
        return unit.records

    def save(self, seed: int, batch: int, task_ids: Sequence[str], records: list[TranscriptRecord]) -> None:
        """Append a finished unit (with the random state now and the wall time since the last save or the
        opening, loading the models included) and flush it to disk."""
        if self.path is None:
            return
        now = time.perf_counter()
        line = {
            "seed": seed,
            "batch": batch,
            "task_ids": list(task_ids),
            "seconds": round(now - self._clock, 3),
            "rng": _encode_rng(),
            "records": [r.to_json() for r in records],
        }
        self._clock = now
        with self.path.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n")
            stream.flush()
            os.fsync(stream.fileno())

    @property
    def loaded(self) -> int:
        """How many finished batches the file held when it was opened."""
        return len(self.units)

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
