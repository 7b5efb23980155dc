"""Leaderboard entries: the versioned JSON schema, validation that names the bad field, loading from disk.

The schema file ``llm_coop_leaderboard/schemas/entry.v1.json`` is the single source of truth for an entry's shape.
:func:`validate_entry` interprets it with a small JSON Schema (2020-12) subset, so the leaderboard needs no
extra dependency, then adds the checks a schema cannot express (hash of the recorded env spec, seeds that
match the per-seed metrics, per-task scores that average to the per-seed ones, metric ranges, transcript
requirements). Every error names the entry and the field, e.g. ``entries/x.json: $.seeds[2]: ...``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from llm_coop_envs.registration import EnvSpec, RegistryError

__all__ = [
    "CODE_EXECUTING_MODULES",
    "SCHEMA_VERSION",
    "UNBOUNDED_METRICS",
    "EntryError",
    "file_sha256",
    "leaderboard_root",
    "load_entry",
    "load_schema",
    "method_families",
    "validate_entry",
]

SCHEMA_VERSION = 1
UNBOUNDED_METRICS = frozenset({"tokens_per_s", "response_time_s"})
"""Metrics that are not fractions in [0, 1]."""
CODE_EXECUTING_MODULES = ("llm_coop_envs.coding",)
"""Env modules whose scores come from running code: their entries must ship a transcript to re-score."""
_MEAN_TOLERANCE = 1e-9


class EntryError(ValueError):
    """An invalid leaderboard entry; the message names the entry and the field."""


SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
"""The entry schemas, shipped as package data (``entry.v<N>.json``), so an installed package validates too."""


def leaderboard_root(cwd: Path | None = None) -> Path:
    """``leaderboards/`` in the current directory (the repository root when run from a checkout).

    Raises :class:`EntryError` when there is none: outside a checkout, name the directory with ``--root``."""
    root = (cwd or Path.cwd()) / "leaderboards"
    if not root.is_dir():
        raise EntryError(
            f"no leaderboards/ directory in {root.parent}; run from the repository root or pass --root DIR"
        )
    return root


def method_families() -> list[str]:
    """The values ``$.method.family`` may take (the schema's enum)."""
    return list(load_schema(SCHEMA_VERSION)["properties"]["method"]["properties"]["family"]["enum"])


@cache
def load_schema(version: int = SCHEMA_VERSION) -> dict[str, Any]:
    path = SCHEMA_DIR / f"entry.v{version}.json"
    if not path.is_file():
        raise EntryError(f"no schema for entry version {version} ({path} does not exist)")
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----- a JSON Schema subset --------------------------------------------------------------------------------
_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            raise EntryError(f"schema: only local references are supported, got {ref!r}")
        node: Any = root
        for part in ref[2:].split("/"):
            node = node[part]
        schema = node
    return schema


def _errors(value: Any, schema: Mapping[str, Any], root: Mapping[str, Any], path: str) -> Iterator[str]:
    schema = _resolve(schema, root)
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_TYPES[name](value) for name in names):
            yield f"{path}: expected {' or '.join(names)}, got {type(value).__name__} {_short(value)}"
            return
    if "const" in schema and value != schema["const"]:
        yield f"{path}: must be {schema['const']!r}, got {_short(value)}"
    if "enum" in schema and value not in schema["enum"]:
        yield f"{path}: must be one of {schema['enum']}, got {_short(value)}"
    yield from _scalar_errors(value, schema, path)
    if isinstance(value, list):
        yield from _array_errors(value, schema, root, path)
    if isinstance(value, dict):
        yield from _object_errors(value, schema, root, path)
    for sub in schema.get("allOf", []):
        yield from _errors(value, sub, root, path)
    if "if" in schema:
        matched = not any(True for _ in _errors(value, schema["if"], root, path))
        branch = schema.get("then" if matched else "else")
        if branch is not None:
            yield from _errors(value, branch, root, path)


def _scalar_errors(value: Any, schema: Mapping[str, Any], path: str) -> Iterator[str]:
    if isinstance(value, str):
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            yield f"{path}: {_short(value)} does not match {schema['pattern']}"
        if len(value) < schema.get("minLength", 0):
            yield f"{path}: must have at least {schema['minLength']} characters"
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            yield f"{path}: must have at most {schema['maxLength']} characters"
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            yield f"{path}: must be >= {schema['minimum']}, got {value}"
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            yield f"{path}: must be > {schema['exclusiveMinimum']}, got {value}"
        if "maximum" in schema and value > schema["maximum"]:
            yield f"{path}: must be <= {schema['maximum']}, got {value}"


def _array_errors(value: list[Any], schema: Mapping[str, Any], root: Mapping[str, Any], path: str) -> Iterator[str]:
    if len(value) < schema.get("minItems", 0):
        yield f"{path}: must have at least {schema['minItems']} item(s)"
    if schema.get("uniqueItems") and len({json.dumps(item, sort_keys=True) for item in value}) < len(value):
        yield f"{path}: items must be unique"
    if "items" in schema:
        for index, item in enumerate(value):
            yield from _errors(item, schema["items"], root, f"{path}[{index}]")


def _object_errors(
    value: dict[str, Any], schema: Mapping[str, Any], root: Mapping[str, Any], path: str
) -> Iterator[str]:
    for name in schema.get("required", []):
        if name not in value:
            yield f"{path}.{name}: required field is missing"
    if len(value) < schema.get("minProperties", 0):
        yield f"{path}: must have at least {schema['minProperties']} field(s)"
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        where = f"{path}.{key}"
        if "propertyNames" in schema:
            yield from (
                f"{where}: bad name: {e.split(': ', 1)[1]}" for e in _errors(key, schema["propertyNames"], root, where)
            )
        if key in properties:
            yield from _errors(item, properties[key], root, where)
        elif extra is False:
            yield f"{where}: unknown field (allowed: {', '.join(sorted(properties))})"
        elif isinstance(extra, Mapping):
            yield from _errors(item, extra, root, where)


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ----- checks beyond the schema ----------------------------------------------------------------------------
def _semantic_errors(entry: Mapping[str, Any]) -> Iterator[str]:
    yield from _env_errors(entry["env"])
    if entry["method"]["family"] == "reference":
        yield from _metric_range_errors(entry["metrics"]["reported"], "$.metrics.reported")
        return
    if "reference" in entry:
        yield "$.reference: only entries of family 'reference' carry a reference block"
    yield from _per_seed_errors(entry)
    yield from _seed_kind_errors(entry)
    yield from _part_errors(entry)
    if "per_task" in entry:
        yield from _per_task_errors(entry)
    yield from _verification_errors(entry)


def _env_errors(env: Mapping[str, Any]) -> Iterator[str]:
    spec = env["spec"]
    if spec is None:
        return
    if spec["id"] != env["id"]:
        yield f"$.env.spec.id: {spec['id']!r} differs from $.env.id {env['id']!r}"
        return
    try:
        expected = EnvSpec(id=spec["id"], entry_point=spec["entry_point"], kwargs=spec["kwargs"]).spec_hash()
    except RegistryError as error:
        yield f"$.env.spec: {error}"
        return
    if env["spec_hash"] != expected:
        yield f"$.env.spec_hash: {env['spec_hash']} is not the hash of $.env.spec ({expected})"


def _metric_range_errors(values: Mapping[str, float], path: str) -> Iterator[str]:
    for name, value in values.items():
        if not math.isfinite(value):
            yield f"{path}.{name}: must be finite, got {value}"
        elif name not in UNBOUNDED_METRICS and not 0.0 <= value <= 1.0:
            yield f"{path}.{name}: a normalised metric must lie in [0, 1], got {value}"
        elif value < 0:
            yield f"{path}.{name}: must be >= 0, got {value}"


def _per_seed_errors(entry: Mapping[str, Any]) -> Iterator[str]:
    per_seed = entry["metrics"]["per_seed"]
    seeds = sorted(str(seed) for seed in entry["seeds"])
    if sorted(per_seed) != seeds:
        yield f"$.metrics.per_seed: seeds {sorted(per_seed)} differ from $.seeds {seeds}"
    primary = entry["metrics"]["primary"]
    for seed, values in per_seed.items():
        if primary not in values:
            yield f"$.metrics.per_seed.{seed}.{primary}: the primary metric is missing"
        yield from _metric_range_errors(values, f"$.metrics.per_seed.{seed}")


def _seed_kind_errors(entry: Mapping[str, Any]) -> Iterator[str]:
    kind, training = entry.get("seed_kind"), entry.get("training_seeds")
    if training is None:
        return
    if kind is None:
        yield "$.training_seeds: needs $.seed_kind (training or sampling) to say what $.seeds are"
    elif kind == "training" and sorted(training) != sorted(entry["seeds"]):
        yield f"$.training_seeds: {sorted(training)} must equal $.seeds {sorted(entry['seeds'])} (seed_kind training)"
    elif kind == "sampling" and len(training) > 1:
        yield f"$.training_seeds: seed_kind sampling evaluates ONE run, got {len(training)} training seeds"


def _part_errors(entry: Mapping[str, Any]) -> Iterator[str]:
    """A merged entry's parts (``provenance.parts``) hold each of its seeds exactly once."""
    parts = entry["provenance"].get("parts")
    if parts is None:
        return
    seeds = [seed for part in parts for seed in part["seeds"]]
    if len(seeds) != len(set(seeds)):
        yield f"$.provenance.parts: a seed appears in more than one part ({sorted(seeds)})"
    elif sorted(seeds) != sorted(entry["seeds"]):
        yield f"$.provenance.parts: the parts' seeds {sorted(seeds)} differ from $.seeds {sorted(entry['seeds'])}"


def _per_task_errors(entry: Mapping[str, Any]) -> Iterator[str]:
    per_seed = entry["metrics"]["per_seed"]
    n_tasks = entry["dataset"]["n_tasks"]
    for metric, by_seed in entry["per_task"].items():
        if sorted(by_seed) != sorted(per_seed):
            yield f"$.per_task.{metric}: seeds {sorted(by_seed)} differ from $.metrics.per_seed {sorted(per_seed)}"
            continue
        for seed, by_task in by_seed.items():
            where = f"$.per_task.{metric}.{seed}"
            if len(by_task) != n_tasks:
                yield f"{where}: holds {len(by_task)} tasks, $.dataset.n_tasks says {n_tasks}"
            elif metric not in per_seed[seed]:
                yield f"{where}: $.metrics.per_seed.{seed} has no {metric!r} to match"
            elif abs(sum(by_task.values()) / len(by_task) - per_seed[seed][metric]) > _MEAN_TOLERANCE:
                yield f"{where}: the task mean differs from $.metrics.per_seed.{seed}.{metric}"


def _verification_errors(entry: Mapping[str, Any]) -> Iterator[str]:
    status = entry["verification"]["status"]
    transcript = entry.get("transcript")
    if status == "re-scored" and (transcript is None or "rescored_with" not in entry["verification"]):
        yield "$.verification.status: 're-scored' needs $.transcript and $.verification.rescored_with"
    spec = entry["env"]["spec"]
    if spec["entry_point"].split(":")[0] in CODE_EXECUTING_MODULES and transcript is None:
        yield "$.transcript: entries of code-executing envs must ship a transcript so they can be re-scored"


def validate_entry(entry: Any, where: str = "entry") -> None:
    """Raise :class:`EntryError` listing every problem of ``entry`` (schema first, then semantics)."""
    if not isinstance(entry, dict):
        raise EntryError(f"{where}: an entry must be a JSON object, got {type(entry).__name__}")
    version = entry.get("schema_version")
    if version != SCHEMA_VERSION:
        raise EntryError(f"{where}: $.schema_version: this build reads version {SCHEMA_VERSION}, got {version!r}")
    schema = load_schema(SCHEMA_VERSION)
    problems = list(_errors(entry, schema, schema, "$"))
    if not problems:
        problems = list(_semantic_errors(entry))
    if problems:
        raise EntryError(f"{where}: " + f"\n{where}: ".join(problems))


def load_entry(path: Path, root: Path | None = None) -> dict[str, Any]:
    """Read, validate and return the entry at ``path``; its transcript (if any) must exist with its hash."""
    root = root or path.parent.parent
    where = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise EntryError(f"{where}: not valid JSON ({error})") from error
    validate_entry(entry, where)
    if entry["entry_id"] != path.stem:
        raise EntryError(f"{where}: $.entry_id {entry['entry_id']!r} must equal the file name {path.stem!r}")
    transcript = entry.get("transcript")
    if transcript is not None:
        file = root / transcript["path"]
        if not file.is_file():
            raise EntryError(f"{where}: $.transcript.path: {transcript['path']} does not exist")
        if file_sha256(file) != transcript["sha256"]:
            raise EntryError(f"{where}: $.transcript.sha256: {transcript['path']} has a different hash")
    return entry  # type: ignore[no-any-return]
