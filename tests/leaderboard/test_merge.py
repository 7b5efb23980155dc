"""Merging entries of one evaluation run in parts: a committed many-seed entry split into one-seed parts
merges back into the same entry; parts that differ in anything but their seeds are refused."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from llm_coop_leaderboard import leaderboard_root, load_entry, main, read_transcript, validate_entry, write_transcript
from llm_coop_leaderboard.entries import entry_digest, write_entry
from llm_coop_leaderboard.merge import MergeError, load_part, merge_entries
from llm_coop_leaderboard.schema import EntryError, file_sha256
from llm_coop_leaderboard.transcripts import Transcript

TRAINED = "magrpo--smollm2-135m-instruct--coop_coding-v0--test--15steps--6fe6949b"  # 3 training seeds
UNTRAINED = "parallel-untrained--smollm2-135m-instruct--coop_writing-v0--test--f77f14b3"  # 5 sampling seeds


def _digest(entry: dict[str, Any]) -> str:
    return entry_digest(
        decoding=entry["decoding"],
        env_kwargs=entry["env"]["spec"]["kwargs"],
        seeds=entry["seeds"],
        seed_kind=entry.get("seed_kind"),
        training_seeds=entry.get("training_seeds", []),
        protocol=entry["method"]["config"].get("protocol"),
    )


@pytest.fixture
def board(tmp_path: Path) -> Path:
    """A leaderboard holding copies of the two committed entries (and their transcripts)."""
    root = tmp_path / "leaderboards"
    for entry_id in (TRAINED, UNTRAINED):
        for folder, suffix in (("entries", ".json"), ("transcripts", ".jsonl.gz")):
            (root / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy(leaderboard_root() / folder / f"{entry_id}{suffix}", root / folder / f"{entry_id}{suffix}")
    return root


def _one_seed(entry: dict[str, Any], seed: int) -> dict[str, Any]:
    """``entry`` as ``llm-coop eval --seeds <seed>`` writes it: one seed's metrics, maps, models and command."""
    part, key = copy.deepcopy(entry), str(seed)
    part.update(seeds=[seed], metrics={**entry["metrics"], "per_seed": {key: entry["metrics"]["per_seed"][key]}})
    part["per_task"] = {metric: {key: by_seed[key]} for metric, by_seed in entry["per_task"].items()}
    config = part["method"]["config"]
    for name in ("train_seconds_per_seed", "weights_sha256"):
        if name in config:
            config[name] = {key: config[name][key]}
    if entry.get("seed_kind") == "training":
        part["training_seeds"] = [seed]
        part["models"] = [
            {
                **{k: v.replace("{seed}", key) if isinstance(v, str) else v for k, v in model.items()},
                "adapter_hash": config["weights_sha256"][key][model["agent"]],
            }
            for model in entry["models"]
        ]
    part["provenance"]["command"] = re.sub(r"--seeds( \d+)+", f"--seeds {seed}", entry["provenance"]["command"])
    part["entry_id"] = f"{entry['entry_id'].rsplit('--', 1)[0]}--{_digest(part)}"
    return part


def _split(board: Path, entry_id: str) -> list[Path]:
    """Write the one-seed parts of a committed entry; returns their entry files in seed order."""
    entry = json.loads((board / "entries" / f"{entry_id}.json").read_text())
    transcript = read_transcript(board / entry["transcript"]["path"])
    paths = []
    for seed in entry["seeds"]:
        part = _one_seed(entry, seed)
        records = tuple(r for r in transcript.records if r.seed == seed)
        path = board / "transcripts" / f"{part['entry_id']}.jsonl.gz"
        write_transcript(
            path, Transcript(transcript.env_id, transcript.spec_hash, transcript.split, transcript.agents, records)
        )
        part["transcript"] = {"path": f"transcripts/{path.name}", "sha256": file_sha256(path)}
        validate_entry(part, part["entry_id"])
        write_entry(board / "entries" / f"{part['entry_id']}.json", part)
        paths.append(board / "entries" / f"{part['entry_id']}.json")
    return paths


def test_entry_digest_reproduces_every_committed_entry_id() -> None:
    checked = 0
    for path in sorted((leaderboard_root() / "entries").glob("*.json")):
        entry = json.loads(path.read_text())
        if entry["method"]["family"] in ("reference", "scripted"):
            continue
        assert entry["entry_id"].endswith(f"--{_digest(entry)}"), path.name
        checked += 1
    assert checked >= 40


@pytest.mark.parametrize("entry_id", [TRAINED, UNTRAINED])
def test_one_seed_parts_merge_back_into_the_many_seed_entry(board: Path, entry_id: str) -> None:
    original = json.loads((board / "entries" / f"{entry_id}.json").read_text())
    parts = [load_part(path, board) for path in reversed(_split(board, entry_id))]  # order does not matter
    merged, transcript = merge_entries(parts, "python -m llm_coop_leaderboard merge ...")
    assert merged["entry_id"] == entry_id  # the id one evaluation of every seed gets
    for field in ("seeds", "models", "metrics", "per_task", "method", "decoding", "env", "dataset"):
        assert merged[field] == original[field], field
    assert merged.get("training_seeds") == original.get("training_seeds")
    stored = read_transcript(board / original["transcript"]["path"])
    key = lambda r: (r.seed, r.task_id, r.sample)  # noqa: E731
    assert sorted(transcript.records, key=key) == sorted(stored.records, key=key)
    listed = merged["provenance"]["parts"]
    assert [item["seeds"] for item in listed] == [[seed] for seed in original["seeds"]]
    assert {item["entry_id"] for item in listed} == {part.entry["entry_id"] for part in parts}
    assert merged["verification"] == {"status": "self-reported"}


def test_the_command_writes_a_valid_entry_that_rescores_and_can_replace_its_parts(board: Path) -> None:
    paths = _split(board, UNTRAINED)
    (board / "entries" / f"{UNTRAINED}.json").unlink()
    (board / "transcripts" / f"{UNTRAINED}.jsonl.gz").unlink()
    args = ["--root", str(board), "merge", *map(str, paths[:3])]
    assert main([*args, "--remove-parts"]) == 0
    three = {**json.loads(paths[3].read_text()), "seeds": [0, 1, 2]}
    first = board / "entries" / f"{UNTRAINED.rsplit('--', 1)[0]}--{_digest(three)}.json"
    assert load_entry(first, board)["seeds"] == [0, 1, 2]
    assert not any(path.exists() for path in paths[:3])
    assert main(["--root", str(board), "merge", str(first), *map(str, paths[3:])]) == 0  # a merged entry merges on
    merged = board / "entries" / f"{UNTRAINED}.json"
    entry = load_entry(merged, board)
    assert [item["seeds"] for item in entry["provenance"]["parts"]] == [[0], [1], [2], [3], [4]]
    assert entry["provenance"]["command"].startswith("python -m llm_coop_leaderboard --root")
    assert main(["--root", str(board), "rescore", str(merged)]) == 0
    assert load_entry(merged, board)["verification"]["status"] == "re-scored"


def _parts_with(board: Path, change: Any) -> list[Path]:
    paths = _split(board, UNTRAINED)[:2]
    entry = json.loads(paths[1].read_text())
    change(entry)
    paths[1].write_text(json.dumps(entry))
    return paths


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda e: e["decoding"].update(temperature=1.0), "$.decoding"),
        (lambda e: e["provenance"]["libraries"].update(torch="2.0.0"), "$.provenance.libraries"),
        (lambda e: e["method"].update(description="another method"), "$.method"),
        (lambda e: e["models"][0].update(model_hash="0" * 64), "$.models"),
    ],
)
def test_parts_that_differ_in_more_than_their_seeds_are_refused(board: Path, change: Any, named: str) -> None:
    parts = [load_part(path, board) for path in _parts_with(board, change)]
    with pytest.raises(MergeError, match=re.escape(named)):
        merge_entries(parts, "merge")


def test_a_part_whose_metrics_its_transcript_does_not_give_is_refused(board: Path) -> None:
    def inflate(entry: dict[str, Any]) -> None:
        seed = str(entry["seeds"][0])
        entry["per_task"]["return"][seed] = {task: 1.0 for task in entry["per_task"]["return"][seed]}
        entry["metrics"]["per_seed"][seed]["return"] = 1.0

    parts = [load_part(path, board) for path in _parts_with(board, inflate)]
    with pytest.raises(MergeError, match=r"per_seed\.1\.return is not what its transcript gives"):
        merge_entries(parts, "merge")


def test_overlapping_seeds_one_part_and_reference_rows_are_refused(board: Path) -> None:
    whole = board / "entries" / f"{UNTRAINED}.json"
    one = _split(board, UNTRAINED)[0]
    with pytest.raises(MergeError, match="seed 0 is also in"):
        merge_entries([load_part(whole, board), load_part(one, board)], "merge")
    with pytest.raises(MergeError, match="at least two"):
        merge_entries([load_part(one, board)], "merge")
    reference = leaderboard_root() / "entries" / "reference--paper-magrpo--tldr.json"
    shutil.copy(reference, board / "entries" / reference.name)
    with pytest.raises(MergeError, match="reference rows"):
        load_part(board / "entries" / reference.name, board)


def test_an_existing_merged_entry_is_kept_without_overwrite(board: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = _split(board, UNTRAINED)
    before = (board / "entries" / f"{UNTRAINED}.json").read_bytes()
    assert main(["--root", str(board), "merge", *map(str, paths)]) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert (board / "entries" / f"{UNTRAINED}.json").read_bytes() == before
    assert all(path.exists() for path in paths)
    assert main(["--root", str(board), "merge", "--overwrite", *map(str, paths)]) == 0


def test_parts_must_list_each_seed_of_the_entry_once(board: Path) -> None:
    entry = load_entry(board / "entries" / f"{UNTRAINED}.json", board)
    part = {"entry_id": "x", "seeds": [0, 1], "provenance": copy.deepcopy(entry["provenance"])}
    entry["provenance"]["parts"] = [part, {**part, "seeds": [1, 2, 3, 4]}]
    with pytest.raises(EntryError, match="more than one part"):
        validate_entry(entry)
    entry["provenance"]["parts"][1]["seeds"] = [2, 3]
    with pytest.raises(EntryError, match=r"differ from \$\.seeds"):
        validate_entry(entry)


def _with_commit(board: Path, commit: str) -> list[Any]:
    def recommit(entry: dict[str, Any]) -> None:
        entry["provenance"]["git_commit"] = commit

    return [load_part(path, board) for path in _parts_with(board, recommit)]


def test_parts_that_ran_different_code_are_refused_unless_allowed(board: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = _with_commit(board, "f" * 40)  # a commit this checkout does not have
    with pytest.raises(MergeError, match=r"cannot compare commits [0-9a-f]{12} \(.*\) and ffffffffffff"):
        merge_entries(parts, "merge")
    calls = []

    def changed(a: str, b: str, paths: tuple[str, ...]) -> list[str]:
        calls.append((a, b, paths))
        return ["baselines/magrpo.py"]

    monkeypatch.setattr("llm_coop_leaderboard.merge.changed_files", changed)
    with pytest.raises(MergeError, match=r"ran different code \(.*changes baselines/magrpo\.py\)"):
        merge_entries(parts, "merge")
    assert calls[0][1:] == ("f" * 40, ("baselines", "llm_coop_envs"))
    merged, _ = merge_entries(parts, "merge", allow_code_change=True)
    assert [item["provenance"]["git_commit"] for item in merged["provenance"]["parts"]][1] == "f" * 40
