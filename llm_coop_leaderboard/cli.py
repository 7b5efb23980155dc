"""Command line of the leaderboards: ``build [--check]``, ``rescore ENTRY...``, ``merge A B...``, ``compare A B``,
``turns ENTRY``, ``rates ENTRY``, ``example``."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from llm_coop_leaderboard.build import BuildError, check, write
from llm_coop_leaderboard.compare import (
    CompareError,
    compare_entries,
    compare_turns,
    flag_rates,
    format_comparison,
    format_rates,
)
from llm_coop_leaderboard.entries import write_entry
from llm_coop_leaderboard.merge import MergeError, load_part, write_merged
from llm_coop_leaderboard.schema import EntryError, leaderboard_root, load_entry
from llm_coop_leaderboard.scoring import RescoreError, rescore
from llm_coop_leaderboard.transcripts import Transcript, TranscriptError, read_transcript

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-coop leaderboard", description="Leaderboard entries, tables, plots.")
    parser.add_argument("--root", type=Path, default=None, help="leaderboards directory (default: ./leaderboards)")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="regenerate tables and plots from the entries")
    build.add_argument("--check", action="store_true", help="write nothing; exit 1 if anything is stale/invalid")
    rescore_cmd = commands.add_parser("rescore", help="re-score entries from their transcripts, mark 're-scored'")
    rescore_cmd.add_argument("entries", nargs="+", type=Path)
    merge = commands.add_parser("merge", help="join entries that differ only in their seeds into one entry")
    merge.add_argument("entries", nargs="+", type=Path, help="entry files of one evaluation, disjoint seeds")
    merge.add_argument("--overwrite", action="store_true", help="replace an existing merged entry")
    merge.add_argument("--remove-parts", action="store_true", help="delete the parts' entries and transcripts")
    merge.add_argument(
        "--allow-code-change",
        action="store_true",
        help="merge parts whose commits differ in baselines/ or llm_coop_envs/",
    )
    compare = commands.add_parser("compare", help="paired per-seed comparison of two entries, a - b with a 95%% CI")
    compare.add_argument("a", type=Path, help="entry file")
    compare.add_argument("b", type=Path, help="entry file on the same env, dataset and split")
    compare.add_argument("--metric", default=None, help="per-task metric (default: a's primary metric)")
    compare.add_argument("--scale", type=float, default=1.0, help="multiply values (4 = coop_coding-v0 joint return)")
    turns = commands.add_parser("turns", help="a multi-turn entry's final turn against its first, paired per episode")
    turns.add_argument("entry", type=Path, help="entry file with a transcript")
    turns.add_argument("--metric", default=None, help="breakdown key (default: the entry's primary metric)")
    turns.add_argument("--scale", type=float, default=1.0, help="multiply values (4 = coop_coding-v0 joint return)")
    rates = commands.add_parser("rates", help="how often each yes/no breakdown flag holds in an entry's episodes")
    rates.add_argument("entry", type=Path, help="entry file with a transcript")
    rates.add_argument("--turn", choices=("first", "final"), default="final", help="each episode's turn to read")
    example = commands.add_parser("example", help="write the scripted example entry for a writing env")
    example.add_argument("--env", required=True)
    example.add_argument("--split", default="test")
    example.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    return parser


def _build(root: Path, check_only: bool) -> int:
    if check_only:
        problems = check(root)
        for problem in problems:
            print(f"leaderboard check: {problem}", file=sys.stderr)
        if not problems:
            print("leaderboard check: every entry valid, every generated file up to date")
        return 1 if problems else 0
    try:
        written = write(root)
    except BuildError as error:
        print(f"leaderboard build failed:\n{error}", file=sys.stderr)
        return 1
    print(f"leaderboard build: wrote {len(written)} files under {root / 'generated'}")
    return 0


def _rescore(root: Path, paths: list[Path]) -> int:
    import llm_coop_envs

    for path in paths:
        try:
            entry = load_entry(path.resolve(), root)
            if entry.get("transcript") is None:
                raise EntryError(f"{path}: has no transcript to re-score")
            result = rescore(entry, read_transcript(root / entry["transcript"]["path"]))
        except (EntryError, RescoreError, TranscriptError) as error:
            print(f"rescore: {error}", file=sys.stderr)
            return 1
        if entry["verification"]["status"] == "self-reported":
            entry["verification"]["status"] = "re-scored"
        entry["verification"]["rescored_with"] = {
            "package_version": llm_coop_envs.__version__,
            "sandbox_backend": result.sandbox_backend,
            "records": result.records,
        }
        write_entry(path, entry)
        print(f"rescore: {path}: {result.records} records reproduce the stored metrics")
    return 0


def _merge(root: Path, args: argparse.Namespace, argv: list[str]) -> int:
    command = shlex.join(["python", "-m", "llm_coop_leaderboard", *argv])
    try:
        parts = [load_part(path, root) for path in args.entries]
        written = write_merged(
            parts,
            root,
            command,
            overwrite=args.overwrite,
            remove_parts=args.remove_parts,
            allow_code_change=args.allow_code_change,
        )
    except (EntryError, MergeError, TranscriptError, OSError) as error:
        print(f"merge: {error}", file=sys.stderr)
        return 1
    seeds = sum(len(part.seeds) for part in parts)
    print(f"merge: wrote {written} ({len(parts)} parts, {seeds} seeds); re-score it: rescore {written}")
    return 0


def _compare(root: Path, a: Path, b: Path, metric: str | None, scale: float) -> int:
    try:
        result = compare_entries(load_entry(a.resolve(), root), load_entry(b.resolve(), root), metric, scale)
    except (EntryError, CompareError, OSError) as error:
        print(f"compare: {error}", file=sys.stderr)
        return 1
    print(format_comparison(result))
    return 0


def _from_transcript(command: str, root: Path, path: Path, read: Callable[[dict, Transcript], str]) -> int:
    """Print ``read(entry, transcript)`` of the entry at ``path``; errors go to stderr as ``command: ...``."""
    try:
        entry = load_entry(path.resolve(), root)
        if entry.get("transcript") is None:
            raise EntryError(f"{path}: has no transcript to read")
        print(read(entry, read_transcript(root / entry["transcript"]["path"])))
    except (EntryError, CompareError, TranscriptError, OSError) as error:
        print(f"{command}: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    """Entry point of ``llm-coop leaderboard`` / ``python -m llm_coop_leaderboard``; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        root = (args.root or leaderboard_root()).resolve()
    except EntryError as error:
        print(f"llm-coop leaderboard: --root: {error}", file=sys.stderr)
        return 2
    if args.command == "build":
        return _build(root, args.check)
    if args.command == "rescore":
        return _rescore(root, args.entries)
    if args.command == "merge":
        return _merge(root, args, argv)
    if args.command == "compare":
        return _compare(root, args.a, args.b, args.metric, args.scale)
    if args.command == "turns":
        return _from_transcript(
            "turns", root, args.entry, lambda e, t: format_comparison(compare_turns(e, t, args.metric, args.scale))
        )
    if args.command == "rates":
        return _from_transcript("rates", root, args.entry, lambda e, t: format_rates(flag_rates(e, t, args.turn)))
    from llm_coop_leaderboard.example import write_example_entry

    print(write_example_entry(args.env, args.seeds, args.split, root))
    return 0
