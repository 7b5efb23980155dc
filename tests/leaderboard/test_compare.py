"""``compare``: paired per-seed differences of two entries, their bootstrap interval, and the refusals."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from llm_coop_leaderboard import load_entry, main
from llm_coop_leaderboard.compare import CompareError, compare_entries, format_comparison

ENTRY = "entries/scripted-lead--coop_writing-v0--test.json"


@pytest.fixture
def entry(board: Path) -> dict[str, Any]:
    return dict(load_entry(board / ENTRY, board))


def _shifted(entry: dict[str, Any], by_seed: dict[str, float]) -> dict[str, Any]:
    """A copy whose every per-task return under seed s is lowered by ``by_seed[s]``."""
    other = copy.deepcopy(entry)
    other["entry_id"] = "shifted"
    for seed, cells in other["per_task"]["return"].items():
        for task in cells:
            cells[task] -= by_seed[seed]
    return other


def test_a_constant_gap_is_the_difference_with_a_point_interval(entry: dict[str, Any]) -> None:
    result = compare_entries(entry, _shifted(entry, {"0": 0.1, "1": 0.1}), scale=4.0)
    assert result.seeds == (0, 1) and result.tasks == len(entry["per_task"]["return"]["0"])
    assert result.difference.point == pytest.approx(0.4)
    assert (result.difference.low, result.difference.high) == pytest.approx((0.4, 0.4))
    assert result.separates and result.seeds_ahead == 2
    for seed, a, b in result.per_seed:
        assert a == pytest.approx(4.0 * entry["metrics"]["per_seed"][str(seed)]["return"])
        assert a - b == pytest.approx(0.4)


def test_a_seed_behind_does_not_separate(entry: dict[str, Any]) -> None:
    result = compare_entries(entry, _shifted(entry, {"0": 0.2, "1": -0.1}))
    assert result.difference.point == pytest.approx(0.05)
    assert -0.1 < result.difference.low < 0.05 < result.difference.high < 0.2
    assert result.seeds_ahead == 1 and not result.separates  # whatever the interval says
    text = format_comparison(result)
    assert "| 0 |" in text and "+0.200 |" in text and "-0.100 |" in text and "no separation" in text


def test_a_gap_below_zero_on_every_seed_is_a_separation_the_other_way(entry: dict[str, Any]) -> None:
    result = compare_entries(_shifted(entry, {"0": 0.1, "1": 0.3}), entry)
    assert result.difference.high < 0.0 and result.seeds_behind == 2
    assert result.separates_below and not result.separates
    assert "b separates from a" in format_comparison(result)
    assert not compare_entries(entry, _shifted(entry, {"0": 0.1, "1": 0.3})).separates_below


def test_only_shared_seeds_are_paired(entry: dict[str, Any]) -> None:
    other = _shifted(entry, {"0": 0.1, "1": 0.3})
    other["seeds"] = [1]
    result = compare_entries(entry, other)
    assert result.seeds == (1,) and result.difference.point == pytest.approx(0.3)


def test_one_shared_seed_never_separates(entry: dict[str, Any]) -> None:
    """One seed leaves the seed bootstrap nothing to resample: a zero-width interval above 0 is no evidence."""
    other = _shifted(entry, {"0": 0.1, "1": 0.3})
    other["seeds"] = [1]
    result = compare_entries(entry, other)
    assert result.difference.low == pytest.approx(result.difference.high) and result.difference.low > 0
    assert result.seeds_ahead == 1 and not result.separates
    assert "one seed" in format_comparison(result) and "separates from" not in format_comparison(result)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e["dataset"].update(split="train"), "different splits"),
        (lambda e: e["dataset"].update(hash="0" * 64), "different datasets"),
        (lambda e: e["env"].update(spec_hash="0" * 64), "different env specs"),
        (lambda e: e.update(seeds=[7]), "share no seed"),
        (lambda e: e["per_task"]["return"]["0"].pop(sorted(e["per_task"]["return"]["0"])[0]), "different tasks"),
        (lambda e: e["per_task"].pop("return"), "no per-task scores of 'return'"),
    ],
)
def test_entries_that_cannot_be_paired_are_refused(entry: dict[str, Any], change: Any, message: str) -> None:
    other = _shifted(entry, {"0": 0.0, "1": 0.0})
    change(other)
    with pytest.raises(CompareError, match=message):
        compare_entries(entry, other)


def test_cli_prints_the_table_and_refuses_a_missing_entry(board: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(board / ENTRY)
    assert main(["--root", str(board), "compare", path, path, "--scale", "4"]) == 0
    out = capsys.readouterr().out
    assert "return x 4, " in out and "mean a - b: +0.000" in out and "no separation" in out
    assert main(["--root", str(board), "compare", path, str(board / "entries" / "missing.json")]) == 1
    assert "compare:" in capsys.readouterr().err


def _episode(seed: int, task: str, returns: list[float]) -> Any:
    from llm_coop_leaderboard.transcripts import TranscriptRecord, TurnRecord

    turns = tuple(TurnRecord({"a": "x"}, 4 * r, {"a": 0.0}, {"return": r}) for r in returns)
    return TranscriptRecord(seed, task, 0, turns)


def test_turns_pair_each_episodes_final_answer_with_its_first() -> None:
    from llm_coop_leaderboard.compare import compare_turns
    from llm_coop_leaderboard.transcripts import Transcript

    records = (
        _episode(0, "t1", [0.25, 0.5]),  # improved by 0.25 after feedback
        _episode(0, "t2", [0.5]),  # solved at turn 1: the same answer on both sides
        _episode(1, "t1", [0.5, 0.25]),  # got worse
        _episode(1, "t2", [0.0, 0.0]),
    )
    entry = {"entry_id": "team", "metrics": {"primary": "return"}}
    result = compare_turns(entry, Transcript("env", "hash", "test", ("a",), records), scale=4)
    assert result.per_seed == ((0, 2.0, 1.5), (1, 0.5, 1.0)) and result.tasks == 2
    assert result.difference.point == pytest.approx(0.0) and result.seeds_ahead == 1 and not result.separates
    with pytest.raises(CompareError, match="no 'tests'"):
        compare_turns(entry, Transcript("env", "hash", "test", ("a",), records), metric="tests")


def test_turns_cli_on_a_single_turn_entry_finds_no_change(board: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--root", str(board), "turns", str(board / ENTRY)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("a = final turn of scripted-lead") and "mean a - b: +0.000 [+0.000, +0.000]" in out


def test_rates_count_each_flag_per_seed_at_the_chosen_turn(board: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llm_coop_leaderboard.compare import flag_rates
    from llm_coop_leaderboard.transcripts import Transcript, TranscriptRecord, TurnRecord

    def episode(seed: int, *flags: bool) -> TranscriptRecord:
        turns = tuple(TurnRecord({"a": "x"}, 0.0, {"a": 0.0}, {"calls_aux": f, "tests": 0.5}) for f in flags)
        return TranscriptRecord(seed, f"t{len(flags)}", 0, turns)

    records = (episode(0, False, True), episode(0, True), episode(1, True, False))
    transcript = Transcript("env", "hash", "test", ("a",), records)
    final = flag_rates({"entry_id": "team"}, transcript)
    assert final.counts == {"calls_aux": {0: 2, 1: 0}} and final.episodes == {0: 2, 1: 1}  # numbers are no flags
    assert flag_rates({"entry_id": "team"}, transcript, "first").counts == {"calls_aux": {0: 1, 1: 1}}
    with pytest.raises(CompareError, match="turn must be"):
        flag_rates({"entry_id": "team"}, transcript, "second")
    assert main(["--root", str(board), "rates", str(board / ENTRY)]) == 0
    assert capsys.readouterr().out.startswith("scripted-lead")
    assert main(["--root", str(board), "rates", str(board / "entries" / "missing.json")]) == 1
    assert capsys.readouterr().err.startswith("rates:")
