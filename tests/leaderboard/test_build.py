"""``build`` and ``build --check``: byte-identical output, stale and invalid files named, groups never mixed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_coop_envs import make
from llm_coop_leaderboard import build_outputs, check, group_entries, load_entry, main, write
from llm_coop_leaderboard.example import write_example_entry

WRITING_ENTRY = "scripted-lead--coop_writing-v0--test"


def test_build_is_byte_identical_and_check_passes(board: Path) -> None:
    first = build_outputs(board)
    assert first == build_outputs(board)
    assert any(name.endswith(".svg") for name in first) and "generated/index.md" in first
    write(board)
    assert check(board) == []
    assert main(["--root", str(board), "build", "--check"]) == 0


def test_the_index_names_the_env_kwargs_of_each_board() -> None:
    from llm_coop_leaderboard.build import _kwargs_cell

    def entry(kwargs: dict) -> dict:
        return {"env": {"spec": {"id": "coop_coding-v0", "kwargs": kwargs}}}

    assert _kwargs_cell(entry({})) == "defaults"
    assert _kwargs_cell(entry({"max_turns": 2, "dataset": "human-eval"})) == '`dataset="human-eval"`, `max_turns=2`'


def test_committed_leaderboard_is_up_to_date() -> None:
    assert main(["build", "--check"]) == 0


def test_check_names_a_stale_table(board: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(board)
    table = next((board / "generated").glob("coop_writing-v0--*.md"))
    table.write_text(table.read_text().replace("re-scored", "reproduced"))
    (board / "generated" / "leftover.md").write_text("old\n")
    problems = check(board)
    assert problems == [
        f"generated/{table.name}: stale (run `python -m llm_coop_leaderboard build`)",
        "generated/leftover.md: not produced by any entry (delete it or rebuild)",
    ]
    assert main(["--root", str(board), "build", "--check"]) == 1
    assert table.name in capsys.readouterr().err
    write(board)
    assert not (board / "generated" / "leftover.md").exists() and check(board) == []


def test_check_names_an_invalid_entry(board: Path) -> None:
    write(board)
    path = board / "entries" / f"{WRITING_ENTRY}.json"
    entry = json.loads(path.read_text())
    entry["method"]["family"] = "magic"
    path.write_text(json.dumps(entry))
    problems = check(board)
    assert len(problems) == 1 and problems[0].startswith(f"entries/{WRITING_ENTRY}.json: $.method.family")
    assert main(["--root", str(board), "build"]) == 1


def test_reference_rows_are_separate_and_never_ranked(board: Path) -> None:
    page = next(
        text.decode() for name, text in build_outputs(board).items() if name.endswith(".md") and "writing" in name
    )
    ranked, _, references = page.partition("## Published reference numbers (not comparable)")
    assert "Extractive lead" in ranked and "(paper)" not in ranked
    assert "MAGRPO (paper)" in references and "94.5" in references
    coding = build_outputs(board)["generated/coop_coding-v0--reference.md"].decode()
    assert "86.7" in coding and "88.5" in coding and "53.9" in coding


def test_grouping_never_mixes_spec_hashes(board: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    (other / "entries").mkdir(parents=True)
    path = write_example_entry("coop_writing-v0", [0], "test", other)
    entry = json.loads(path.read_text())
    env = make("coop_writing-v0", max_turns=2)  # same id and data, different spec
    entry["env"] = {"id": env.spec.id, "spec_hash": env.spec.spec_hash(), "spec": env.spec.to_dict()}
    entry["entry_id"] = "scripted-lead-two-turns"
    entry["transcript"] = None
    (board / "entries" / "scripted-lead-two-turns.json").write_text(json.dumps(entry))
    entries = [load_entry(p, board) for p in sorted((board / "entries").glob("*.json"))]
    groups = group_entries(entries)
    assert len(groups) == 2
    for key, members in groups.items():
        assert {m["env"]["spec_hash"] for m in members} == {key.spec_hash}
        assert {m["dataset"]["hash"] for m in members} == {key.dataset_hash}
    pages = [name for name in build_outputs(board) if name.startswith("generated/coop_writing-v0--")]
    assert len(pages) == 4  # two groups, a table and a plot each


def _trained_copy(board: Path, entry_id: str, name: str, steps: int, kind: str, tasks_per_step: int = 1) -> None:
    entry = json.loads((board / "entries" / f"{WRITING_ENTRY}.json").read_text())
    entry.update(entry_id=entry_id, train_steps=steps, seed_kind=kind, training_seeds=entry["seeds"])
    entry["method"].update(name=name, family="joint-reward")
    if tasks_per_step != 1:
        entry["method"]["config"] = {"train_config": {"tasks_per_step": tasks_per_step}}
    (board / "entries" / f"{entry_id}.json").write_text(json.dumps(entry))


def test_tables_show_training_steps_and_seed_kinds_and_flag_differing_budgets(board: Path) -> None:
    _trained_copy(board, "long-run", "Long", 450, "training")
    page = next(t.decode() for n, t in build_outputs(board).items() if n.endswith(".md") and "writing" in n)
    header = next(line for line in page.splitlines() if line.startswith("| Rank"))
    assert "| Train steps |" in header and "| Seeds × tasks |" in header
    long_row = next(line for line in page.splitlines() if "[long-run]" in line)
    scripted = next(line for line in page.splitlines() if f"[{WRITING_ENTRY}]" in line)
    assert "| 450 |" in long_row and "(training seeds)" in long_row
    assert "| – |" in scripted and "(sampling seeds)" in scripted
    assert "Training budgets differ" not in page  # one trained budget only
    _trained_copy(board, "short-run", "Short", 20, "training")
    page = next(t.decode() for n, t in build_outputs(board).items() if n.endswith(".md") and "writing" in n)
    assert "| 450 ² |" in page and "| 20 ² |" in page
    assert "² Training budgets differ between these rows (20 steps: Short; 450 steps: Long)" in page


def test_steps_of_several_tasks_are_a_budget_of_their_own(board: Path) -> None:
    _trained_copy(board, "one-task-steps", "One", 20, "training")
    _trained_copy(board, "two-task-steps", "Two", 20, "training", tasks_per_step=2)
    page = next(t.decode() for n, t in build_outputs(board).items() if n.endswith(".md") and "writing" in n)
    two = next(line for line in page.splitlines() if "[two-task-steps]" in line)
    assert "| 20 (2 tasks each) ² |" in two
    assert "(20 steps: One; 20 (2 tasks each) steps: Two)" in page


def test_a_one_seed_row_shows_no_interval_and_is_not_ranked_as_certain(board: Path, tmp_path: Path) -> None:
    """One seed: the seed bootstrap's interval has zero width, so the table prints none and the rank band of
    that row spans the whole table (the two-seed scripted row keeps its interval)."""
    other = tmp_path / "one-seed-board"
    write_example_entry("coop_writing-v0", [0], "test", other)
    entry = json.loads((other / "entries" / f"{WRITING_ENTRY}.json").read_text())
    transcript = board / "transcripts" / "one-seed.jsonl.gz"
    transcript.write_bytes((other / entry["transcript"]["path"]).read_bytes())
    entry.update(entry_id="one-seed", transcript={**entry["transcript"], "path": "transcripts/one-seed.jsonl.gz"})
    entry["method"]["name"] = "Once"
    (board / "entries" / "one-seed.json").write_text(json.dumps(entry))
    outputs = build_outputs(board)
    page = next(t.decode() for n, t in outputs.items() if n.endswith(".md") and "writing" in n)
    once = next(line for line in page.splitlines() if "[one-seed]" in line)
    scripted = next(line for line in page.splitlines() if f"[{WRITING_ENTRY}]" in line)
    assert once.startswith("| 1–2 |") and "(1 seed: no CI)" in once and "| 1 × " in once
    assert scripted.startswith("| 1–2 |") and "no CI" not in scripted and " [" in scripted
    plot = next(t.decode() for n, t in outputs.items() if n.endswith(".svg") and "writing" in n)
    assert "Once (1 seed)" in plot and plot.count("(1 seed)") == 1


def test_cli_without_a_leaderboards_directory_names_root(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["build", "--check"]) == 2
    assert "--root" in capsys.readouterr().err
