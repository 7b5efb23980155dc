"""Transcript files: round trip, byte-identical output, errors that name the line; aggregation to metrics."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from llm_coop_leaderboard import (
    Transcript,
    TranscriptError,
    TranscriptRecord,
    TurnRecord,
    aggregate,
    read_transcript,
    write_transcript,
)


def _record(seed: int, task: str, sample: int, tests: float, ret: float) -> TranscriptRecord:
    breakdown = {"return": ret, "structure": 1.0, "syntax": 1.0, "tests": tests, "cooperation": 0.0,
                 "tests_passed": int(tests * 4), "tests_total": 4}  # fmt: skip
    turn = TurnRecord(
        {"helper": "def aux(): ...", "main": "def f(): ..."}, 4 * ret, {"helper": 1.0, "main": 1.0}, breakdown
    )
    return TranscriptRecord(seed=seed, task_id=task, sample=sample, turns=(turn,), timing={"response_time_s": 1.0})


def _transcript() -> Transcript:
    records = [_record(0, "t1", 0, 1.0, 0.9), _record(0, "t1", 1, 0.5, 0.5), _record(0, "t2", 0, 0.0, 0.2),
               _record(0, "t2", 1, 0.0, 0.4), _record(1, "t1", 0, 1.0, 1.0), _record(1, "t1", 1, 1.0, 0.8),
               _record(1, "t2", 0, 1.0, 0.6), _record(1, "t2", 1, 0.25, 0.2)]  # fmt: skip
    return Transcript("coop_coding-v0", "a" * 64, "test", ("helper", "main"), tuple(records))


def test_round_trip_and_byte_identical(tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    write_transcript(first, _transcript())
    write_transcript(second, read_transcript(first))
    assert first.read_bytes() == second.read_bytes()
    assert read_transcript(second) == _transcript()


def test_malformed_lines_are_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl.gz"
    write_transcript(path, _transcript())
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    lines[3] = '{"seed": 0, "task_id": "t2"}'
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    with pytest.raises(TranscriptError, match="line 4: malformed record"):
        read_transcript(path)
    path.write_bytes(gzip.compress(b'{"format": "other"}\n'))
    with pytest.raises(TranscriptError, match="header"):
        read_transcript(path)
    with pytest.raises(TranscriptError, match=r"\.jsonl\.gz"):
        write_transcript(tmp_path / "x.json", _transcript())


def test_aggregate_means_and_pass_at_k() -> None:
    result = aggregate(_transcript().records, pass_ks=(1, 2, 5))
    # seed 0: t1 returns (0.9 + 0.5)/2 = 0.7, t2 (0.2 + 0.4)/2 = 0.3 -> 0.5
    assert result.per_seed["0"]["return"] == pytest.approx(0.5)
    assert result.per_task["return"]["1"] == pytest.approx({"t1": 0.9, "t2": 0.4})
    # pass@1 seed 0: t1 has 1 of 2 passing -> 0.5, t2 0 of 2 -> 0; pass@2: t1 1.0, t2 0
    assert result.per_seed["0"]["pass@1"] == pytest.approx(0.25)
    assert result.per_seed["0"]["pass@2"] == pytest.approx(0.5)
    assert result.per_seed["1"]["pass@1"] == pytest.approx((1.0 + 0.5) / 2)
    assert "pass@5" not in result.per_seed["0"]  # more than the 2 samples drawn per task
    assert result.per_seed["1"]["response_time_s"] == pytest.approx(1.0)
    assert "response_time_s" not in result.per_task
