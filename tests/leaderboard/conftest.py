"""Fixtures: a private leaderboard directory with real (scripted) entries, transcripts and paper references."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llm_coop_leaderboard import leaderboard_root
from llm_coop_leaderboard.example import write_example_entry


@pytest.fixture(scope="session")
def _template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("leaderboard-template")
    (root / "entries").mkdir()
    for path in sorted((leaderboard_root() / "entries").glob("reference--*.json")):
        shutil.copy(path, root / "entries" / path.name)
    write_example_entry("coop_writing-v0", [0, 1], "test", root)
    return root


@pytest.fixture
def board(_template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the template leaderboard directory (entries + transcripts, nothing generated)."""
    root = tmp_path / "leaderboards"
    shutil.copytree(_template, root)
    return root
