"""Leaderboards: entry schema and validation, transcripts, re-scoring, statistics, tables and plots.

    python -m llm_coop_leaderboard build            # regenerate leaderboards/generated/ from the entries
    python -m llm_coop_leaderboard build --check    # exit 1 naming every stale file or invalid entry
    python -m llm_coop_leaderboard rescore leaderboards/entries/<id>.json   # verify, mark 're-scored'
    python -m llm_coop_leaderboard merge <seed0>.json <seed1>.json   # seeds evaluated apart, as one entry
    python -m llm_coop_leaderboard example --env coop_writing-v0 --seeds 0 1 2

(``llm-coop leaderboard ...`` runs the same :func:`main`.) The layout of ``leaderboards/`` and the meaning of
every entry field are documented in ``leaderboards/README.md``.
"""

from __future__ import annotations

from llm_coop_leaderboard.build import BuildError, build_outputs, check, group_entries, write
from llm_coop_leaderboard.cli import main
from llm_coop_leaderboard.entries import collect_provenance, dataset_fingerprint, make_entry, write_entry
from llm_coop_leaderboard.schema import EntryError, leaderboard_root, load_entry, validate_entry
from llm_coop_leaderboard.scoring import Aggregate, RescoreError, RescoreResult, aggregate, rescore
from llm_coop_leaderboard.transcripts import (
    Transcript,
    TranscriptError,
    TranscriptRecord,
    TurnRecord,
    read_transcript,
    write_transcript,
)

__all__ = [
    "Aggregate",
    "BuildError",
    "EntryError",
    "RescoreError",
    "RescoreResult",
    "Transcript",
    "TranscriptError",
    "TranscriptRecord",
    "TurnRecord",
    "aggregate",
    "build_outputs",
    "check",
    "collect_provenance",
    "dataset_fingerprint",
    "group_entries",
    "leaderboard_root",
    "load_entry",
    "main",
    "make_entry",
    "read_transcript",
    "rescore",
    "validate_entry",
    "write",
    "write_entry",
    "write_transcript",
]
