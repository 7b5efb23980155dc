"""Entry validation: committed entries are valid; every kind of bad entry is rejected naming the field."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llm_coop_leaderboard import EntryError, leaderboard_root, load_entry, validate_entry
from llm_coop_leaderboard.schema import load_schema

WRITING_ENTRY = "scripted-lead--coop_writing-v0--test"

COMMITTED = sorted((leaderboard_root() / "entries").glob("*.json"))


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.stem)
def test_committed_entries_are_valid(path: Path) -> None:
    load_entry(path, leaderboard_root())


def test_schema_is_valid_json_schema_and_agrees_with_jsonschema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    for path in COMMITTED:
        jsonschema.validate(json.loads(path.read_text()), schema)


def _entry(board: Path) -> dict[str, Any]:
    return json.loads((board / "entries" / f"{WRITING_ENTRY}.json").read_text())


def _set(*keys: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(entry: dict[str, Any]) -> None:
        node = entry
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return mutate


def _delete(*keys: str) -> Callable[[dict[str, Any]], None]:
    def mutate(entry: dict[str, Any]) -> None:
        node = entry
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]

    return mutate


CASES = [
    ("missing git commit", _delete("provenance", "git_commit"), r"\$\.provenance\.git_commit: required"),
    ("bad family", _set("method", "family", value="rl"), r"\$\.method\.family: must be one of"),
    ("unknown field", _set("method", "colour", value="red"), r"\$\.method\.colour: unknown field"),
    ("bool seed", _set("seeds", value=[0, True]), r"\$\.seeds\[1\]: expected integer"),
    ("bad spec hash", _set("env", "spec_hash", value="0" * 64), r"\$\.env\.spec_hash: .* is not the hash"),
    ("kwargs changed", _set("env", "spec", "kwargs", value={"max_turns": 2}), r"\$\.env\.spec_hash"),
    ("seed mismatch", _set("seeds", value=[0, 1, 2]), r"\$\.metrics\.per_seed: seeds"),
    ("metric range", _set("metrics", "per_seed", "0", "return", value=1.5), r"per_seed\.0\.return: .* \[0, 1\]"),
    ("task mean", _set("per_task", "return", "1", "post-004", value=0.0), r"\$\.per_task\.return\.1: the task mean"),
    ("unknown metric", _set("metrics", "per_seed", "0", "bleu", value=0.5), r"per_seed\.0\.bleu: bad name"),
    ("intermediate ckpt", _set("checkpoint", value="step-100"), r"\$\.checkpoint: must be 'final'"),
    ("claims re-scored", _set("verification", value={"status": "re-scored"}), r"'re-scored' needs"),
    ("version", _set("schema_version", value=2), r"\$\.schema_version"),
]


@pytest.mark.parametrize(("name", "mutate", "message"), CASES, ids=[c[0] for c in CASES])
def test_invalid_entries_name_the_field(board: Path, name: str, mutate: Callable, message: str) -> None:
    entry = _entry(board)
    validate_entry(copy.deepcopy(entry), "ok")
    mutate(entry)
    with pytest.raises(EntryError, match=message):
        validate_entry(entry, "x.json")


def test_reference_entries_need_their_reference_block(board: Path) -> None:
    entry = json.loads((board / "entries" / "reference--paper-magrpo--tldr.json").read_text())
    del entry["reference"]
    with pytest.raises(EntryError, match=r"\$\.reference: required"):
        validate_entry(entry, "ref.json")


def test_load_entry_checks_file_name_and_transcript_hash(board: Path) -> None:
    path = board / "entries" / f"{WRITING_ENTRY}.json"
    transcript = board / "transcripts" / f"{WRITING_ENTRY}.jsonl.gz"
    transcript.write_bytes(transcript.read_bytes() + b"\0")
    with pytest.raises(EntryError, match=r"\$\.transcript\.sha256"):
        load_entry(path, board)
    renamed = board / "entries" / "another-name.json"
    path.rename(renamed)
    with pytest.raises(EntryError, match="must equal the file name"):
        load_entry(renamed, board)


def test_provenance_dirty_flag_ignores_the_leaderboards_own_outputs(monkeypatch, tmp_path):
    """A tree whose only changes are regenerated entries/transcripts/tables is clean for provenance."""
    import subprocess

    import llm_coop_leaderboard.entries as entries_mod

    repo = tmp_path / "repo"
    for d in ("leaderboards/entries", "leaderboards/generated", "baselines/leaderboard", "src"):
        (repo / d).mkdir(parents=True)
    (repo / "leaderboards/entries/e.json").write_text("{}")
    (repo / "src/code.py").write_text("x = 1\n")

    def git(*args):
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    git("-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    monkeypatch.setattr(entries_mod, "_git", git)
    (repo / "leaderboards/entries/e.json").write_text('{"changed": true}')
    assert entries_mod.collect_provenance("cmd", None)["git_dirty"] is False
    (repo / "src/code.py").write_text("x = 2\n")
    assert entries_mod.collect_provenance("cmd", None)["git_dirty"] is True


SEED_CASES = [
    ("bad seed kind", {"seed_kind": "bootstrap"}, r"\$\.seed_kind: must be one of"),
    (
        "training seeds differ",
        {"seed_kind": "training", "training_seeds": [0, 7]},
        r"\$\.training_seeds: .* must equal",
    ),
    ("sampling of two runs", {"seed_kind": "sampling", "training_seeds": [0, 1]}, r"seed_kind sampling evaluates ONE"),
    ("kind missing", {"training_seeds": [0, 1]}, r"\$\.training_seeds: needs \$\.seed_kind"),
    ("negative steps", {"train_steps": -1}, r"\$\.train_steps: must be >= 0"),
]


@pytest.mark.parametrize(("name", "fields", "message"), SEED_CASES, ids=[c[0] for c in SEED_CASES])
def test_seed_kind_training_seeds_and_steps_are_checked(board: Path, name: str, fields: dict, message: str) -> None:
    entry = _entry(board)  # seeds [0, 1]
    valid = {**entry, "seed_kind": "training", "training_seeds": [1, 0], "train_steps": 100}
    validate_entry(valid, "ok")
    validate_entry({**entry, "seed_kind": "sampling", "training_seeds": [3]}, "ok")
    with pytest.raises(EntryError, match=message):
        validate_entry({**entry, **fields}, "x.json")
