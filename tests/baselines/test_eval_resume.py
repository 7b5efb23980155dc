"""`llm-coop eval --resume`: a killed evaluation continues from its finished batches and ends with the texts and
scores of one that was never interrupted; a batches file of another evaluation is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from baselines import eval_resume, evaluation
from baselines.eval_resume import FinishedBatches, batches_path
from baselines.evaluation import EvalConfig, EvalError, config_from_args, evaluate, main
from llm_coop_leaderboard import load_entry, read_transcript


def _cfg(root: Path, **kw: Any) -> EvalConfig:
    base = dict(env="coop_writing-v0", baseline="parallel", seeds=(0, 1), batch_tasks=7, max_new_tokens=8)
    root.mkdir(exist_ok=True)
    return EvalConfig(**{**base, **kw, "root": root, "progress": False, "command": "llm-coop eval (test)"})


class Killed(Exception):
    """Stands for the process dying after some batches were saved."""


def _kill_after(monkeypatch: pytest.MonkeyPatch, saves: int) -> None:
    original, count = FinishedBatches.save, [0]

    def save(self: FinishedBatches, *args: Any) -> None:
        original(self, *args)
        count[0] += 1
        if count[0] == saves:
            raise Killed

    monkeypatch.setattr(FinishedBatches, "save", save)


def _texts_and_scores(root: Path, entry_path: Path) -> list[tuple[Any, ...]]:
    entry = load_entry(entry_path, root)
    records = read_transcript(root / entry["transcript"]["path"]).records
    return [(r.seed, r.task_id, r.sample, r.turns) for r in records]  # timings differ between runs


def _interrupted_then_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, saves: int, **kw: Any) -> Path:
    root = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        _kill_after(patch, saves)
        with pytest.raises(Killed):
            evaluate(_cfg(root, **kw))
    path = next((root / "partial").glob("*.batches.jsonl"))
    assert len(path.read_text().splitlines()) == 1 + saves  # the header and one line per finished batch
    result = evaluate(_cfg(root, resume=True, **kw))
    assert result.entry_path is not None and not path.exists()  # removed once the entry is written
    return result.entry_path


@pytest.mark.parametrize(
    "kw",
    [
        pytest.param({}, id="protocol-rng-runs-on-across-batches"),
        pytest.param(
            {"env": "coop_coding-v0", "max_turns": 2, "seeds": (0,), "batch_tasks": 5}, id="team-over-two-turns"
        ),
    ],
)
def test_a_resumed_evaluation_equals_an_uninterrupted_one(tmp_path, monkeypatch, kw):
    whole = evaluate(_cfg(tmp_path / "whole", **kw)).entry_path
    assert whole is not None
    resumed = _interrupted_then_resumed(tmp_path, monkeypatch, 2, **kw)
    assert _texts_and_scores(tmp_path / "resumed", resumed) == _texts_and_scores(tmp_path / "whole", whole)
    entry = load_entry(resumed, tmp_path / "resumed")
    assert entry["provenance"]["resumed_batches"] == 2 and entry["provenance"]["wall_time_s"] > 0
    assert "resumed_batches" not in load_entry(whole, tmp_path / "whole")["provenance"]


def test_the_random_state_after_a_batch_is_what_makes_the_resume_exact(tmp_path, monkeypatch):
    """Without restoring it, the batch after the interruption samples other texts (so the test above can fail)."""
    whole = evaluate(_cfg(tmp_path / "whole", seeds=(0,))).entry_path
    assert whole is not None
    monkeypatch.setattr(eval_resume, "_restore_rng", lambda state: None)
    resumed = _interrupted_then_resumed(tmp_path, monkeypatch, 1, seeds=(0,))
    assert _texts_and_scores(tmp_path / "resumed", resumed) != _texts_and_scores(tmp_path / "whole", whole)


def test_a_left_batches_file_needs_resume_or_overwrite_and_another_evaluation_is_refused(tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        _kill_after(patch, 1)
        with pytest.raises(Killed):
            evaluate(_cfg(tmp_path))
    path = next((tmp_path / "partial").glob("*.batches.jsonl"))
    before = path.read_bytes()
    with pytest.raises(EvalError, match=r"interrupted evaluation.*--resume.*--overwrite"):
        evaluate(_cfg(tmp_path))
    with pytest.raises(EvalError, match=r"another evaluation \(batch_tasks: 7 there, 5 now\)"):
        evaluate(_cfg(tmp_path, resume=True, batch_tasks=5))  # same entry id, other flags
    header = json.loads(before.decode().splitlines()[0])
    header["config"]["temperature"] = 0.5  # an id collision with other decoding
    path.write_text(json.dumps(header) + "\n" + before.decode().split("\n", 1)[1])
    with pytest.raises(EvalError, match=r"temperature: 0\.5 there, None now"):
        evaluate(_cfg(tmp_path, resume=True))
    path.write_bytes(before)
    assert evaluate(_cfg(tmp_path, overwrite=True)).entry_path is not None  # starts over
    assert not path.exists()


def test_a_torn_last_line_is_dropped_and_that_batch_played_again(tmp_path, monkeypatch):
    whole = evaluate(_cfg(tmp_path / "whole", seeds=(0,))).entry_path
    root = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        _kill_after(patch, 2)
        with pytest.raises(Killed):
            evaluate(_cfg(root, seeds=(0,)))
    path = next((root / "partial").glob("*.batches.jsonl"))
    text = path.read_text()
    path.write_text(text[: len(text) - 200])  # killed in the middle of writing batch 1
    result = evaluate(_cfg(root, seeds=(0,), resume=True))
    assert load_entry(result.entry_path, root)["provenance"]["resumed_batches"] == 1
    assert _texts_and_scores(root, result.entry_path) == _texts_and_scores(tmp_path / "whole", whole)


def test_a_damaged_line_before_the_last_is_an_error_naming_it(tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        _kill_after(patch, 2)
        with pytest.raises(Killed):
            evaluate(_cfg(tmp_path, seeds=(0,)))
    path = next((tmp_path / "partial").glob("*.batches.jsonl"))
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{not json", lines[2]]) + "\n")
    with pytest.raises(EvalError, match=r"line 2: not a finished batch"):
        evaluate(_cfg(tmp_path, seeds=(0,), resume=True))
    path.write_text("garbage\n")
    with pytest.raises(EvalError, match=r"not a version-1 batches file"):
        evaluate(_cfg(tmp_path, seeds=(0,), resume=True))


def test_resume_without_a_batches_file_starts_from_the_first_batch(tmp_path, capsys):
    result = evaluate(_cfg(tmp_path, seeds=(0,), resume=True))
    assert (
        result.entry_path is not None and "resumed_batches" not in load_entry(result.entry_path, tmp_path)["provenance"]
    )
    assert "nothing at" in capsys.readouterr().err
    assert not batches_path(tmp_path, result.entry_path.stem).exists()


def test_resume_is_a_flag_and_heldout_keeps_no_batches(tmp_path):
    cfg = config_from_args(["--env", "coop_writing-v0", "--baseline", "single", "--resume", "--overwrite"])
    assert cfg.resume and cfg.overwrite
    with pytest.raises(EvalError, match="--heldout keeps no progress"):
        EvalConfig(policy=str(tmp_path), heldout=True, resume=True).validate()


def test_a_resume_under_other_code_is_refused(tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        _kill_after(patch, 1)
        patch.setattr(eval_resume, "_code_version", lambda: {"package_version": "0.0.1", "git_commit": "a" * 40})
        with pytest.raises(Killed):
            evaluate(_cfg(tmp_path, seeds=(0,)))
    monkeypatch.setattr(eval_resume, "_code_version", lambda: {"package_version": "0.0.2", "git_commit": "a" * 40})
    with pytest.raises(EvalError, match=r"written by llm-coop-envs 0\.0\.1, this is 0\.0\.2"):
        evaluate(_cfg(tmp_path, seeds=(0,), resume=True))
    monkeypatch.setattr(eval_resume, "_code_version", lambda: {"package_version": "0.0.1", "git_commit": "b" * 40})
    monkeypatch.setattr(eval_resume, "changed_files", lambda a, b, paths: ["baselines/lm/sampling.py"])
    with pytest.raises(EvalError, match=r"aaaaaaaaaaaa\.\.bbbbbbbbbbbb changes baselines/lm/sampling\.py"):
        evaluate(_cfg(tmp_path, seeds=(0,), resume=True))
    monkeypatch.setattr(eval_resume, "changed_files", lambda a, b, paths: [])  # only docs changed: goes on
    result = evaluate(_cfg(tmp_path, seeds=(0,), resume=True))
    assert load_entry(result.entry_path, tmp_path)["provenance"]["resumed_batches"] == 1


def test_the_entry_records_the_commit_the_evaluation_started_at(tmp_path, monkeypatch):
    """A commit made while a long evaluation runs is not the code it ran."""
    head = {"commit": "c" * 40}
    original_provenance, original_save = evaluation.collect_provenance, FinishedBatches.save
    monkeypatch.setattr(
        evaluation, "collect_provenance", lambda *a: {**original_provenance(*a), "git_commit": head["commit"]}
    )

    def save_then_commit(self: FinishedBatches, *args: Any) -> None:
        original_save(self, *args)
        head["commit"] = "d" * 40  # someone commits while the evaluation plays its batches

    monkeypatch.setattr(FinishedBatches, "save", save_then_commit)
    result = evaluate(_cfg(tmp_path, seeds=(0,)))
    assert head["commit"] == "d" * 40
    assert load_entry(result.entry_path, tmp_path)["provenance"]["git_commit"] == "c" * 40


def test_an_evaluation_killed_by_sigkill_resumes_from_the_command_line(tmp_path):
    """The real thing: the process dies at an arbitrary moment (no handler runs), and the same command with
    --resume finishes it with the uninterrupted texts and scores."""
    args = ["--env", "coop_writing-v0", "--baseline", "parallel", "--seeds", "0", "--batch-tasks", "2"]
    args += ["--max-new-tokens", "8", "--no-progress"]
    (tmp_path / "whole").mkdir()
    assert main([*args, "--root", str(tmp_path / "whole")]) == 0
    root = tmp_path / "killed"
    root.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "baselines.evaluation", *args, "--root", str(root)], env=env)
    deadline = time.monotonic() + 120
    path = root / "partial"
    while time.monotonic() < deadline and process.poll() is None:
        files = list(path.glob("*.batches.jsonl")) if path.is_dir() else []
        if files and len(files[0].read_text().splitlines()) >= 3:  # the header and two batches
            break
        time.sleep(0.05)
    assert process.poll() is None, "finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert main([*args, "--root", str(root), "--resume"]) == 0
    (whole,) = (tmp_path / "whole" / "entries").glob("*.json")
    (resumed,) = (root / "entries").glob("*.json")
    assert load_entry(resumed, root)["provenance"]["resumed_batches"] >= 2
    assert _texts_and_scores(root, resumed) == _texts_and_scores(tmp_path / "whole", whole)
