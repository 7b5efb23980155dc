"""One evaluation run in parts: entries that differ only in their seeds, merged into one entry.

Training seeds of a real model take hours each, so they are often trained and evaluated on different
machines or days; ``merge A B ...`` joins those evaluations. Parts must agree on everything but their seeds:
env spec, dataset, method (its config apart from the per-seed maps ``train_seconds_per_seed`` and
``weights_sha256``), models (a per-seed run's paths with its seed as ``{seed}``), decoding, seed kind, budget,
split, primary metric, ``pass@k`` values, package version, Python, libraries and sandbox backend; the first
field that differs is named. The merged entry holds every part's episodes in one transcript, metrics
computed again from it (they must equal each part's own), the per-seed maps joined, and each part's
provenance under ``provenance.parts``; its top-level provenance describes the merge (command, commit), with
the parts' shared versions. Its id is the one ``llm-coop eval`` gives an evaluation of all the seeds at once
(:func:`llm_coop_leaderboard.entries.entry_digest`). It is ``self-reported`` until ``rescore`` runs.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import math
import posixpath
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_coop_leaderboard.entries import changed_files, collect_provenance, entry_digest, write_entry
from llm_coop_leaderboard.schema import EntryError, load_entry, validate_entry
from llm_coop_leaderboard.scoring import aggregate
from llm_coop_leaderboard.transcripts import Transcript, read_transcript, transcript_bytes, write_transcript

__all__ = ["MergeError", "Part", "load_part", "merge_entries", "write_merged"]

SEED_MAPS = ("train_seconds_per_seed", "weights_sha256")
"""``method.config`` maps keyed by training seed: joined, not compared."""
SHARED_PROVENANCE = ("package_version", "python", "libraries", "sandbox_backend")
"""Provenance fields every part must share: the same code release and libraries produced every seed."""
CODE_PATHS = ("baselines", "llm_coop_envs")
"""The code that trains, samples and scores: parts evaluated at commits that differ here are refused."""
_TOLERANCE = 1e-9


class MergeError(ValueError):
    """Entries that cannot be merged; the message names the entry and the field."""


@dataclass(frozen=True)
class Part:
    """One evaluated part: its entry file, the validated entry and its transcript."""

    path: Path
    entry: dict[str, Any]
    transcript: Transcript

    @property
    def seeds(self) -> list[int]:
        return sorted(self.entry["seeds"])


def load_part(path: Path, root: Path) -> Part:
    """Read and validate an entry and its transcript (its hash is checked by :func:`load_entry`)."""
    entry = load_entry(path.resolve(), root)
    if entry["method"]["family"] == "reference":
        raise MergeError(f"{path}: reference rows are published numbers, not evaluations to merge")
    if entry.get("transcript") is None:
        raise MergeError(f"{path}: has no transcript; merging needs every part's episodes")
    return Part(path, entry, read_transcript(root / entry["transcript"]["path"]))


# ----- what parts must share -----------------------------------------------------------------------------------
def _policy_template(entry: Mapping[str, Any]) -> str | None:
    """The ``--policy`` of the evaluation command when it names per-seed runs (``'runs/x-seed{seed}'``)."""
    try:
        words = shlex.split(entry["provenance"]["command"])
    except ValueError:
        return None
    values = [after for word, after in itertools.pairwise(words) if word == "--policy"]
    values += [word.split("=", 1)[1] for word in words if word.startswith("--policy=")]
    templates = [posixpath.normpath(value) for value in values if "{seed}" in value]
    return templates[0] if len(templates) == 1 else None


def _templated_models(part: Part) -> list[dict[str, Any]]:
    """The models with a one-seed part's run directory written as its ``{seed}`` template, without hashes
    (they are per seed, in ``method.config.weights_sha256``), as a many-seed evaluation records them."""
    entry = part.entry
    if entry.get("seed_kind") != "training" or len(part.seeds) > 1:
        return [dict(model) for model in entry["models"]]
    template = _policy_template(entry)
    if template is None:
        raise MergeError(
            f"{part.path}: a per-seed run merges only when it was evaluated with --policy 'RUN{{seed}}' "
            f"(its command: {entry['provenance']['command']!r})"
        )
    run = template.replace("{seed}", str(part.seeds[0]))
    models = []
    for model in entry["models"]:
        out = {key: value.replace(run, template) if isinstance(value, str) else value for key, value in model.items()}
        models.append({**out, **{key: None for key in ("model_hash", "adapter_hash") if key in out}})
    return models


def _shared_fields(part: Part) -> dict[str, Any]:
    """Everything that must be equal across the parts, in the order the first difference is reported."""
    entry = part.entry
    method = copy.deepcopy(entry["method"])
    for name in SEED_MAPS:
        method.get("config", {}).pop(name, None)
    provenance = entry["provenance"]
    sampling = entry.get("seed_kind") != "training"
    return {
        "entry id (before its hash)": entry["entry_id"].rsplit("--", 1)[0],
        "$.env": entry["env"],
        "$.dataset": entry["dataset"],
        "$.method": method,
        "$.models": _templated_models(part),
        "$.decoding": entry["decoding"],
        "$.seed_kind": entry.get("seed_kind"),
        "$.training_seeds": entry.get("training_seeds") if sampling else None,
        "$.train_steps": entry.get("train_steps"),
        "$.trained_on_eval_split": entry.get("trained_on_eval_split"),
        "$.checkpoint": entry["checkpoint"],
        "$.notes": entry.get("notes"),
        "$.metrics.primary": entry["metrics"]["primary"],
        "pass@k": sorted({name for values in entry["metrics"]["per_seed"].values() for name in values if "@" in name}),
        "transcript header": part.transcript.header(),
        **{f"$.provenance.{name}": provenance.get(name) for name in SHARED_PROVENANCE},
    }


def _check_parts(parts: Sequence[Part]) -> dict[str, Any]:
    """Refuse parts that are not one evaluation; returns the fields they share."""
    if len(parts) < 2:
        raise MergeError("merge needs at least two entries")
    seen: dict[int, Path] = {}
    for part in parts:
        for seed in part.seeds:
            if seed in seen:
                raise MergeError(f"{part.path}: seed {seed} is also in {seen[seed]}; parts must hold disjoint seeds")
            seen[seed] = part.path
    first = _shared_fields(parts[0])
    for part in parts[1:]:
        for name, value in _shared_fields(part).items():
            if value != first[name]:
                raise MergeError(f"{part.path}: {name} differs from {parts[0].path}'s; only the seeds may differ")
    return first


def _check_code(parts: Sequence[Part]) -> None:
    """The parts ran the same training, sampling and scoring code (their commits agree under CODE_PATHS)."""
    commits = {item["provenance"]["git_commit"]: item["entry_id"] for part in parts for item in _part_provenance(part)}
    if None in commits:
        raise MergeError(f"{commits[None]}: records no git commit, so the code it ran cannot be compared")
    first, *others = commits
    for commit in others:
        changed = changed_files(first, commit, CODE_PATHS)
        if changed is None:
            raise MergeError(
                f"cannot compare commits {first[:12]} ({commits[first]}) and {commit[:12]} ({commits[commit]}) "
                "in this checkout; merge where both are in the history, or pass --allow-code-change"
            )
        if changed:
            shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
            raise MergeError(
                f"{commits[first]} and {commits[commit]} ran different code ({first[:12]}..{commit[:12]} changes "
                f"{shown}); pass --allow-code-change if no change affects the results"
            )


# ----- the merged entry ----------------------------------------------------------------------------------------
def _check_metrics(parts: Sequence[Part], per_seed: Mapping[str, Mapping[str, float]]) -> None:
    """Each part's stored metrics are the ones its own episodes give."""
    for part in parts:
        for seed, stored in part.entry["metrics"]["per_seed"].items():
            fresh = per_seed[seed]
            for name, value in stored.items():
                if name not in fresh or not math.isclose(value, fresh[name], rel_tol=_TOLERANCE, abs_tol=_TOLERANCE):
                    raise MergeError(f"{part.path}: $.metrics.per_seed.{seed}.{name} is not what its transcript gives")


def _part_provenance(part: Part) -> list[dict[str, Any]]:
    """A part's own provenance, or the parts of an entry that was itself merged."""
    provenance = dict(part.entry["provenance"])
    nested = provenance.pop("parts", None)
    if nested is not None:
        return [copy.deepcopy(p) for p in nested]
    return [{"entry_id": part.entry["entry_id"], "seeds": part.seeds, "provenance": provenance}]


def _merged_provenance(parts: Sequence[Part], command: str) -> dict[str, Any]:
    listed = [item for part in parts for item in _part_provenance(part)]
    shared = {
        name: parts[0].entry["provenance"][name] for name in SHARED_PROVENANCE if name in parts[0].entry["provenance"]
    }
    provenance = {**collect_provenance(command, shared.get("sandbox_backend")), **shared}
    provenance["hardware"] = "; ".join(dict.fromkeys(item["provenance"]["hardware"] for item in listed))
    walls = [item["provenance"].get("wall_time_s") for item in listed]
    if all(isinstance(wall, (int, float)) for wall in walls):
        provenance["wall_time_s"] = round(math.fsum(walls), 1)  # type: ignore[arg-type]
    else:
        provenance.pop("wall_time_s", None)
    provenance["parts"] = listed
    return provenance


def _joined_seed_maps(parts: Sequence[Part]) -> dict[str, dict[str, Any]]:
    joined: dict[str, dict[str, Any]] = {}
    for part in parts:
        for name in SEED_MAPS:
            values = part.entry["method"].get("config", {}).get(name)
            if values is not None:
                joined.setdefault(name, {}).update(values)
    return {name: dict(sorted(values.items(), key=lambda item: int(item[0]))) for name, values in joined.items()}


def _merged_id(parts: Sequence[Part], seeds: list[int], training_seeds: list[int]) -> str:
    entry = parts[0].entry
    digest = entry_digest(
        decoding=entry["decoding"],
        env_kwargs=entry["env"]["spec"]["kwargs"],
        seeds=seeds,
        seed_kind=entry.get("seed_kind"),
        training_seeds=training_seeds,
        protocol=entry["method"].get("config", {}).get("protocol"),
    )
    return f"{entry['entry_id'].rsplit('--', 1)[0]}--{digest}"


def merge_entries(
    parts: Sequence[Part], command: str, allow_code_change: bool = False
) -> tuple[dict[str, Any], Transcript]:
    """The merged entry (transcript path still to be set by :func:`write_merged`) and its transcript.

    Raises :class:`MergeError` naming the part and the field when the parts are not one evaluation, or
    (unless ``allow_code_change``) when their commits differ in :data:`CODE_PATHS`."""
    parts = sorted(parts, key=lambda part: part.seeds[0])
    shared = _check_parts(parts)
    if not allow_code_change:
        _check_code(parts)
    first = parts[0]
    records = tuple(record for part in parts for record in sorted(part.transcript.records, key=lambda r: r.seed))
    transcript = Transcript(
        first.transcript.env_id, first.transcript.spec_hash, first.transcript.split, first.transcript.agents, records
    )
    pass_ks = [int(name.split("@")[1]) for name in shared["pass@k"]]
    result = aggregate(records, pass_ks=pass_ks or (1,))
    _check_metrics(parts, result.per_seed)
    seeds = sorted(seed for part in parts for seed in part.seeds)
    training = seeds if first.entry.get("seed_kind") == "training" else first.entry.get("training_seeds", [])
    entry = copy.deepcopy(first.entry)
    entry.update(
        entry_id=_merged_id(parts, seeds, training),
        seeds=seeds,
        models=shared["$.models"],
        metrics={"primary": first.entry["metrics"]["primary"], "per_seed": result.per_seed},
        per_task=result.per_task,
        provenance=_merged_provenance(parts, command),
        verification={"status": "self-reported"},
    )
    if "training_seeds" in first.entry:
        entry["training_seeds"] = sorted(training)
    if "config" in entry["method"]:
        entry["method"]["config"].update(_joined_seed_maps(parts))
    return entry, transcript


def write_merged(
    parts: Sequence[Part],
    root: Path,
    command: str,
    *,
    overwrite: bool = False,
    remove_parts: bool = False,
    allow_code_change: bool = False,
) -> Path:
    """Write the merged entry and its transcript under ``root``; with ``remove_parts`` delete the parts'
    entry and transcript files afterwards (the merged entry holds all they held). Returns the entry path."""
    entry, transcript = merge_entries(parts, command, allow_code_change)
    path = root / "entries" / f"{entry['entry_id']}.json"
    transcript_path = root / "transcripts" / f"{entry['entry_id']}.jsonl.gz"
    if not overwrite and (path.exists() or transcript_path.exists()):
        raise MergeError(f"{path} already exists; pass --overwrite to replace it")
    content = transcript_bytes(transcript)
    entry["transcript"] = {
        "path": transcript_path.relative_to(root).as_posix(),
        "sha256": hashlib.sha256(content).hexdigest(),
    }
    try:
        validate_entry(entry, path.name)
    except EntryError as error:
        raise MergeError(str(error)) from None
    write_transcript(transcript_path, transcript)
    write_entry(path, entry)
    if remove_parts:
        for part in parts:
            (root / part.entry["transcript"]["path"]).unlink()
            part.path.unlink()
    return path
