"""Evaluation transcripts: gzip-compressed JSON Lines, one record per (seed, task, sample).

Line 1 is a header, every further line one record::

    {"format": "llm-coop-transcript", "version": 1, "env_id": "coop_writing-v0", "spec_hash": "...",
     "split": "test", "agents": ["summary", "elaboration"]}
    {"seed": 0, "task_id": "test-003", "sample": 0,
     "turns": [{"actions": {"summary": "...", "elaboration": "..."}, "joint_reward": 2.1,
                "individual_rewards": {"summary": 1.4, "elaboration": 2.2}, "breakdown": {...}}],
     "timing": {"response_time_s": 1.8, "new_tokens": 312}}

``turns`` holds every turn of the episode in order (one for single-turn envs); the last turn's breakdown
gives the reported metrics. ``timing`` is optional and never re-scored. Files are written with gzip
``mtime=0``, no file name and sorted keys, so equal records give byte-identical files.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "TRANSCRIPT_FORMAT",
    "TRANSCRIPT_VERSION",
    "Transcript",
    "TranscriptError",
    "TranscriptRecord",
    "TurnRecord",
    "read_transcript",
    "transcript_bytes",
    "write_transcript",
]

TRANSCRIPT_FORMAT = "llm-coop-transcript"
TRANSCRIPT_VERSION = 1


class TranscriptError(ValueError):
    """A transcript file that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class TurnRecord:
    """One turn: each agent's text and what the env returned for the joint action."""

    actions: Mapping[str, str]
    joint_reward: float
    individual_rewards: Mapping[str, float]
    breakdown: Mapping[str, Any]


@dataclass(frozen=True)
class TranscriptRecord:
    """One episode: ``sample`` indexes the samples drawn for ``task_id`` under ``seed``."""

    seed: int
    task_id: str
    sample: int
    turns: tuple[TurnRecord, ...]
    timing: Mapping[str, float] = field(default_factory=dict)

    @property
    def final(self) -> TurnRecord:
        return self.turns[-1]

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "task_id": self.task_id,
            "sample": self.sample,
            "turns": [
                {
                    "actions": dict(turn.actions),
                    "joint_reward": turn.joint_reward,
                    "individual_rewards": dict(turn.individual_rewards),
                    "breakdown": dict(turn.breakdown),
                }
                for turn in self.turns
            ],
            "timing": dict(self.timing),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TranscriptRecord:
        turns = tuple(
            TurnRecord(
                actions=turn["actions"],
                joint_reward=float(turn["joint_reward"]),
                individual_rewards=turn["individual_rewards"],
                breakdown=turn["breakdown"],
            )
            for turn in data["turns"]
        )
        if not turns:
            raise KeyError("turns (empty)")
        return cls(
            seed=int(data["seed"]),
            task_id=str(data["task_id"]),
            sample=int(data["sample"]),
            turns=turns,
            timing=data.get("timing", {}),
        )


@dataclass(frozen=True)
class Transcript:
    """A header (env id, spec hash, split, agents) and the records of one evaluation."""

    env_id: str
    spec_hash: str
    split: str
    agents: tuple[str, ...]
    records: tuple[TranscriptRecord, ...]

    def header(self) -> dict[str, Any]:
        return {
            "format": TRANSCRIPT_FORMAT,
            "version": TRANSCRIPT_VERSION,
            "env_id": self.env_id,
            "spec_hash": self.spec_hash,
            "split": self.split,
            "agents": list(self.agents),
        }


def _line(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def transcript_bytes(transcript: Transcript) -> bytes:
    """The compressed file content (deterministic)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as stream:
        stream.write(_line(transcript.header()).encode("utf-8"))
        for record in transcript.records:
            stream.write(_line(record.to_json()).encode("utf-8"))
    return buffer.getvalue()


def write_transcript(path: Path, transcript: Transcript) -> None:
    """Write ``transcript`` to ``path`` (``.jsonl.gz``) atomically."""
    if not path.name.endswith(".jsonl.gz"):
        raise TranscriptError(f"{path}: transcript files must end in .jsonl.gz")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(transcript_bytes(transcript))
    temporary.replace(path)


def _parse_lines(path: Path) -> Iterable[tuple[int, Any]]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as stream:
            for number, line in enumerate(stream, start=1):
                if line.strip():
                    yield number, json.loads(line)
    except (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TranscriptError(f"{path}: unreadable transcript ({error})") from error


def read_transcript(path: Path) -> Transcript:
    """Read a transcript written by :func:`write_transcript`; errors name the file and line."""
    lines = iter(_parse_lines(path))
    first = next(lines, None)
    if first is None or not isinstance(first[1], dict) or first[1].get("format") != TRANSCRIPT_FORMAT:
        raise TranscriptError(f"{path}: line 1 is not a {TRANSCRIPT_FORMAT} header")
    header = first[1]
    if header.get("version") != TRANSCRIPT_VERSION:
        raise TranscriptError(f"{path}: transcript version {header.get('version')!r}; this reader reads 1")
    records = []
    for number, data in lines:
        try:
            records.append(TranscriptRecord.from_json(data))
        except (KeyError, TypeError, ValueError) as error:
            raise TranscriptError(f"{path}, line {number}: malformed record ({error})") from error
    return Transcript(
        env_id=header["env_id"],
        spec_hash=header["spec_hash"],
        split=header["split"],
        agents=tuple(header["agents"]),
        records=tuple(records),
    )
