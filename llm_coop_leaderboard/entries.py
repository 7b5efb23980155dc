"""Writing leaderboard entries: dataset fingerprints, provenance, and an entry built from a transcript.

The evaluation runner calls :func:`make_entry` with the env it evaluated, the transcript it wrote and a
description of the method; the result validates against ``entry.v1.json`` and is written with
:func:`write_entry` (canonical JSON: two-space indent, sorted keys, trailing newline).
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import llm_coop_envs
from llm_coop_envs.core import CoopParallelEnv
from llm_coop_leaderboard.schema import SCHEMA_VERSION, file_sha256, validate_entry
from llm_coop_leaderboard.scoring import aggregate
from llm_coop_leaderboard.transcripts import Transcript

__all__ = [
    "changed_files",
    "collect_provenance",
    "dataset_fingerprint",
    "entry_digest",
    "entry_json",
    "make_entry",
    "write_entry",
]

_LIBRARIES = ("numpy", "gymnasium", "pettingzoo", "torch", "transformers", "peft", "evaluate")


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def dataset_fingerprint(env: CoopParallelEnv, split: str, name: str, revision: str | None) -> dict[str, Any]:
    """The ``dataset`` block: SHA-256 of the canonical JSON of every task of ``split`` (id, split, fields)."""
    tasks = [{"task_id": t.task_id, "split": t.split, "fields": _plain(t.fields)} for t in env.tasks.split_tasks(split)]
    payload = json.dumps(tasks, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return {
        "name": name,
        "revision": revision,
        "hash": hashlib.sha256(payload.encode("utf-8")).hexdigest(),
        "split": split,
        "n_tasks": len(tasks),
    }


def entry_digest(
    *,
    decoding: Mapping[str, Any],
    env_kwargs: Mapping[str, Any],
    seeds: Sequence[int],
    seed_kind: str | None,
    training_seeds: Sequence[int],
    protocol: str | None,
) -> str:
    """The 8 hex digits that end an entry id: a hash of what makes two evaluations of one method on one env,
    split and budget differ. ``llm-coop eval`` and ``merge`` both name entries with it, so merging the parts
    of an evaluation gives the id one evaluation of all its seeds would have."""
    config = {
        "decoding": dict(decoding),
        "env_kwargs": dict(env_kwargs),
        "seeds": sorted(seeds),
        "seed_kind": seed_kind,
        "training_seeds": sorted(training_seeds),
        "protocol": protocol,
    }
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[1]
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def changed_files(a: str, b: str, paths: Sequence[str]) -> list[str] | None:
    """Files under ``paths`` that differ between commits ``a`` and ``b`` of this checkout (None: git cannot
    tell here, e.g. no checkout or a commit it does not have)."""
    out = _git("diff", "--name-only", a, b, "--", *paths)
    return None if out is None else out.splitlines()


_OUTPUTS = tuple(f":(exclude)leaderboards/{d}" for d in ("entries", "transcripts", "generated"))
"""The leaderboard's own outputs: changes there (e.g. entries rewritten by a regeneration in progress) do not
make the tree dirty for provenance."""


def collect_provenance(command: str, sandbox_backend: str | None, hardware: str | None = None) -> dict[str, Any]:
    """Package version, git commit (and whether the tree was dirty), library versions, hardware."""
    libraries = {}
    for name in _LIBRARIES:
        try:
            libraries[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    commit = _git("rev-parse", "HEAD")
    return {
        "package_version": llm_coop_envs.__version__,
        "git_commit": commit if commit and len(commit) == 40 else None,
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no", "--", ".", *_OUTPUTS)),
        "command": command,
        "python": platform.python_version(),
        "libraries": libraries,
        "hardware": hardware or f"{platform.machine()} {platform.processor() or platform.system()}".strip(),
        "sandbox_backend": sandbox_backend,
    }


def make_entry(
    *,
    entry_id: str,
    env: CoopParallelEnv,
    transcript: Transcript,
    transcript_path: Path,
    leaderboard_dir: Path,
    dataset: Mapping[str, Any],
    method: Mapping[str, Any],
    models: Sequence[Mapping[str, Any]],
    decoding: Mapping[str, Any],
    provenance: Mapping[str, Any],
    pass_ks: Sequence[int] = (1,),
    seed_kind: str | None = None,
    training_seeds: Sequence[int] | None = None,
    train_steps: int | None = None,
    trained_on_eval_split: bool | None = None,
) -> dict[str, Any]:
    """A complete, validated, self-reported entry whose metrics are computed from ``transcript``.

    ``seed_kind``: ``"training"`` (one trained run per seed, each sampled with its seed) or ``"sampling"``
    (one model sampled under each seed); ``training_seeds``: the seeds the evaluated runs were trained with;
    ``train_steps``: training steps per run; ``trained_on_eval_split``: whether the evaluated split is the one
    the policies were trained on (their scores are then on training tasks). Each is left out when None."""
    result = aggregate(transcript.records, pass_ks=pass_ks)
    seeds = sorted({record.seed for record in transcript.records})
    entry = {
        "schema_version": SCHEMA_VERSION,
        "entry_id": entry_id,
        "env": {"id": env.spec.id, "spec_hash": env.spec.spec_hash(), "spec": env.spec.to_dict()},
        "dataset": dict(dataset),
        "method": dict(method),
        "models": [dict(model) for model in models],
        "decoding": dict(decoding),
        "seeds": seeds,
        "checkpoint": "final",
        "metrics": {"primary": "return", "per_seed": result.per_seed},
        "per_task": result.per_task,
        "transcript": {
            "path": transcript_path.relative_to(leaderboard_dir).as_posix(),
            "sha256": file_sha256(transcript_path),
        },
        "provenance": dict(provenance),
        "verification": {"status": "self-reported"},
    }
    if seed_kind is not None:
        entry["seed_kind"] = seed_kind
    if training_seeds is not None:
        entry["training_seeds"] = sorted(training_seeds)
    if train_steps is not None:
        entry["train_steps"] = train_steps
    if trained_on_eval_split is not None:
        entry["trained_on_eval_split"] = trained_on_eval_split
    validate_entry(entry, entry_id)
    return entry


def entry_json(entry: Mapping[str, Any]) -> str:
    """Canonical text of an entry file."""
    return json.dumps(entry, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def write_entry(path: Path, entry: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(entry_json(entry), encoding="utf-8")
    temporary.replace(path)
