"""Re-scoring transcripts with the current env code: reproduces stored metrics, flags tampering."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from llm_coop_envs import make
from llm_coop_leaderboard import (
    RescoreError,
    Transcript,
    TranscriptRecord,
    TurnRecord,
    check,
    collect_provenance,
    dataset_fingerprint,
    load_entry,
    main,
    make_entry,
    read_transcript,
    rescore,
    write_transcript,
)
from llm_coop_leaderboard.schema import file_sha256

WRITING_ENTRY = "scripted-lead--coop_writing-v0--test"


def _paths(board: Path) -> tuple[Path, Path]:
    return board / "entries" / f"{WRITING_ENTRY}.json", board / "transcripts" / f"{WRITING_ENTRY}.jsonl.gz"


def test_rescoring_a_writing_transcript_reproduces_the_entry(board: Path) -> None:
    entry_path, transcript_path = _paths(board)
    entry = load_entry(entry_path, board)
    result = rescore(entry, read_transcript(transcript_path))
    assert result.records == 2 * entry["dataset"]["n_tasks"]
    for seed, metrics in entry["metrics"]["per_seed"].items():
        assert result.aggregate.per_seed[seed] == pytest.approx(metrics, rel=1e-12)
    assert entry["verification"]["status"] == "self-reported"
    assert main(["--root", str(board), "rescore", str(entry_path)]) == 0
    marked = load_entry(entry_path, board)
    assert marked["verification"]["status"] == "re-scored"
    assert marked["verification"]["rescored_with"]["records"] == result.records


def _tamper(board: Path, text: str | None = None, reward: float | None = None) -> None:
    entry_path, transcript_path = _paths(board)
    transcript = read_transcript(transcript_path)
    first = transcript.records[0]
    turn = first.turns[0]
    if text is not None:
        turn = dataclasses.replace(turn, actions={**turn.actions, "elaboration": text})
    if reward is not None:
        turn = dataclasses.replace(turn, joint_reward=reward)
    records = (dataclasses.replace(first, turns=(turn,)), *transcript.records[1:])
    write_transcript(transcript_path, dataclasses.replace(transcript, records=records))
    entry = json.loads(entry_path.read_text())
    entry["transcript"]["sha256"] = file_sha256(transcript_path)  # a forger would update the hash too
    entry_path.write_text(json.dumps(entry))


def test_a_tampered_reward_is_flagged(board: Path) -> None:
    _tamper(board, reward=2.9)
    entry_path, transcript_path = _paths(board)
    with pytest.raises(RescoreError, match=r"task=post-004 sample=0 turn=1: stored joint reward 2\.9"):
        rescore(load_entry(entry_path, board), read_transcript(transcript_path))
    problems = check(board)
    assert any(p.startswith(f"entries/{WRITING_ENTRY}.json: re-scoring its transcript failed") for p in problems)
    assert main(["--root", str(board), "rescore", str(entry_path)]) == 1


def test_a_swapped_text_is_flagged(board: Path) -> None:
    _tamper(board, text="A different paragraph that was never scored like this, written afterwards.")
    entry_path, transcript_path = _paths(board)
    with pytest.raises(RescoreError, match="task=post-004"):
        rescore(load_entry(entry_path, board), read_transcript(transcript_path))


def test_inflated_metrics_are_flagged(board: Path) -> None:
    entry_path, transcript_path = _paths(board)
    entry = json.loads(entry_path.read_text())
    by_task = entry["per_task"]["return"]["0"]
    for task in by_task:
        by_task[task] = min(1.0, by_task[task] + 0.1)
    entry["metrics"]["per_seed"]["0"]["return"] = sum(by_task.values()) / len(by_task)
    entry_path.write_text(json.dumps(entry))
    with pytest.raises(RescoreError, match=r"\$\.metrics\.per_seed\.0\.return"):
        rescore(load_entry(entry_path, board), read_transcript(transcript_path))


def test_coding_entry_is_rescored_in_the_sandbox(tmp_path: Path) -> None:
    env = make("coop_coding-v0")
    tasks = [env.tasks.get(task_id) for task_id in env.task_ids("test")[:2]]
    records = []
    for seed in (0, 1):
        for task in tasks:
            for sample, code in enumerate([task.fields["reference_main"], "def nothing():\n    return 1\n"]):
                actions = {"helper": task.fields["reference_aux"], "main": code}
                score = env.score(task, actions)
                turn = TurnRecord(actions, score.joint, dict(score.individual), dict(score.breakdown))
                records.append(TranscriptRecord(seed, task.task_id, sample, (turn,)))
    transcript = Transcript(env.spec.id, env.spec.spec_hash(), "test", tuple(env.possible_agents), tuple(records))
    path = tmp_path / "transcripts" / "coding.jsonl.gz"
    write_transcript(path, transcript)
    dataset = dataset_fingerprint(env, "test", "bundled", None)
    dataset["n_tasks"] = 2  # this test evaluates a subset
    entry = make_entry(
        entry_id="coding-example", env=env, transcript=transcript, transcript_path=path, leaderboard_dir=tmp_path,
        dataset=dataset, method={"name": "reference code", "family": "scripted", "description": "bundled solutions"},
        models=[{"agent": a, "model": "scripted:reference"} for a in env.possible_agents],
        decoding={"samples_per_task": 2}, provenance=collect_provenance("pytest", env.sandbox.backend), pass_ks=(1, 2),
    )  # fmt: skip
    assert entry["metrics"]["per_seed"]["0"]["pass@1"] == pytest.approx(0.5)
    assert entry["metrics"]["per_seed"]["0"]["pass@2"] == pytest.approx(1.0)
    result = rescore(entry, read_transcript(path))
    assert result.records == 8 and result.sandbox_backend in ("bwrap", "subprocess")
