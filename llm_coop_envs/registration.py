"""The environment registry: ``register``, ``make``, ``spec``, ``pprint_registry``, ``registry_ids``.

Gymnasium semantics. An id is ``[namespace/]name-vN``; ``make("name")`` without a version resolves to the
newest registered version; an unknown id raises a ``RegistryError`` that lists what exists. Keyword
arguments stored in the spec are merged with (and overridden by) the keyword arguments given to ``make``,
and the spec attached to the returned env (``env.spec``) records the merged arguments, so two envs made
with different data or settings never share a spec hash.

Every id registered here is also registered in PettingZoo's own registry (parallel and AEC), so
``pettingzoo.make("parallel", "coop_writing-v0")`` works once ``llm_coop_envs`` is imported.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

__all__ = [
    "EnvSpec",
    "RegistryError",
    "make",
    "pprint_registry",
    "register",
    "registry_ids",
    "spec",
]

_ID_PATTERN = re.compile(r"^(?:(?P<namespace>[\w.-]+)/)?(?P<name>[\w.-]+?)(?:-v(?P<version>\d+))?$")


class RegistryError(ValueError):
    """A malformed, unknown or duplicate environment id."""


def _parse_id(env_id: str) -> tuple[str | None, str, int | None]:
    match = _ID_PATTERN.fullmatch(env_id) if isinstance(env_id, str) else None
    if match is None:
        raise RegistryError(
            f"malformed environment id {env_id!r}: expected '[namespace/]name-vN', e.g. 'coop_writing-v0'"
        )
    version = match.group("version")
    return match.group("namespace"), match.group("name"), int(version) if version is not None else None


def _freeze_json(value: Any, where: str) -> Any:
    """Deep-copy ``value`` into immutable JSON-compatible containers, or raise naming the bad field."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_freeze_json(item, f"{where}[{i}]") for i, item in enumerate(value))
    if isinstance(value, Mapping):
        frozen = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise RegistryError(f"spec kwargs must have string keys; {where} has key {key!r}")
            frozen[key] = _freeze_json(item, f"{where}.{key}")
        return MappingProxyType(frozen)
    raise RegistryError(
        f"spec kwargs must be JSON-serialisable (str, number, bool, None, list, dict); "
        f"{where} is a {type(value).__name__}"
    )


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    return value


@dataclass(frozen=True)
class EnvSpec:
    """An immutable, JSON-serialisable description of how to build one environment.

    Attributes:
        id: ``[namespace/]name-vN``.
        entry_point: ``"module:callable"`` building the env from keyword arguments.
        kwargs: default keyword arguments (JSON values only; frozen).
        description: one line shown by ``pprint_registry``.
    """

    id: str
    entry_point: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        _parse_id(self.id)
        if not isinstance(self.entry_point, str) or ":" not in self.entry_point:
            raise RegistryError(
                f"entry_point of {self.id!r} must be a 'module:callable' string, got {self.entry_point!r}"
            )
        object.__setattr__(self, "kwargs", _freeze_json(dict(self.kwargs), "kwargs"))

    @property
    def namespace(self) -> str | None:
        return _parse_id(self.id)[0]

    @property
    def name(self) -> str:
        return _parse_id(self.id)[1]

    @property
    def version(self) -> int | None:
        return _parse_id(self.id)[2]

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (what ``to_json`` serialises)."""
        return {
            "id": self.id,
            "entry_point": self.entry_point,
            "kwargs": _thaw(self.kwargs),
            "description": self.description,
        }

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no whitespace): byte-identical for equal specs."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> EnvSpec:
        data = json.loads(text)
        return cls(
            id=data["id"],
            entry_point=data["entry_point"],
            kwargs=data["kwargs"],
            description=data.get("description", ""),
        )

    def spec_hash(self) -> str:
        """SHA-256 of the canonical JSON, minus the free-text description."""
        payload = json.dumps(
            {k: v for k, v in self.to_dict().items() if k != "description"}, sort_keys=True, separators=(",", ":")
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def with_kwargs(self, **overrides: Any) -> EnvSpec:
        """This spec with ``overrides`` merged over its kwargs."""
        return replace(self, kwargs={**_thaw(self.kwargs), **overrides})

    def make(self, **kwargs: Any) -> Any:
        """Build the environment described by this spec (with ``kwargs`` merged over its own)."""
        full = self.with_kwargs(**kwargs)
        env = _load_entry_point(self.entry_point)(**_thaw(full.kwargs))
        env.spec = full
        return env


_REGISTRY: dict[str, EnvSpec] = {}


def _load_entry_point(entry_point: str) -> Callable[..., Any]:
    module_name, attr = entry_point.split(":", 1)
    creator = getattr(importlib.import_module(module_name), attr, None)
    if not callable(creator):
        raise RegistryError(f"entry point {entry_point!r} does not name a callable")
    return creator  # type: ignore[no-any-return]


def register(id: str, entry_point: str, kwargs: Mapping[str, Any] | None = None, description: str = "") -> EnvSpec:
    """Add an environment to the registry (and to PettingZoo's). Re-registering an id is an error."""
    new_spec = EnvSpec(id=id, entry_point=entry_point, kwargs=dict(kwargs or {}), description=description)
    if id in _REGISTRY:
        raise RegistryError(f"environment id {id!r} is already registered")
    _REGISTRY[id] = new_spec
    _register_with_pettingzoo(new_spec)
    return new_spec


def _register_with_pettingzoo(env_spec: EnvSpec) -> None:
    import pettingzoo

    kwargs = _thaw(env_spec.kwargs)
    pettingzoo.register("parallel", env_spec.id, entry_point=env_spec.entry_point, kwargs=copy.deepcopy(kwargs))
    pettingzoo.register(
        "aec", env_spec.id, entry_point="llm_coop_envs.core:make_aec", kwargs={"env_id": env_spec.id, **kwargs}
    )


def registry_ids() -> list[str]:
    """Every registered id, sorted."""
    return sorted(_REGISTRY)


def spec(id: str) -> EnvSpec:
    """The spec registered under ``id`` (an unversioned id resolves to the newest version)."""
    namespace, name, version = _parse_id(id)
    if id in _REGISTRY:
        return _REGISTRY[id]
    versions = sorted(
        (s.version, s)
        for s in _REGISTRY.values()
        if s.namespace == namespace and s.name == name and s.version is not None
    )
    if version is None and versions:
        return versions[-1][1]
    known = ", ".join(registry_ids()) or "(none)"
    if versions:
        raise RegistryError(
            f"{id!r} has no version v{version}; registered versions: {', '.join(s.id for _, s in versions)}"
        )
    raise RegistryError(f"unknown environment id {id!r}; registered ids: {known}")


def make(id: str | EnvSpec, **kwargs: Any) -> Any:
    """Build a registered environment; ``kwargs`` override the spec's own."""
    env_spec = id if isinstance(id, EnvSpec) else spec(id)
    return env_spec.make(**kwargs)


def pprint_registry(print_fn: Callable[[str], None] = print) -> None:
    """Print every registered id with its description, grouped by namespace."""
    by_namespace: dict[str, list[EnvSpec]] = {}
    for env_id in registry_ids():
        env_spec = _REGISTRY[env_id]
        by_namespace.setdefault(env_spec.namespace or "(no namespace)", []).append(env_spec)
    for namespace, specs in by_namespace.items():
        print_fn(f"===== {namespace} =====")
        width = max(len(s.id) for s in specs)
        for env_spec in specs:
            print_fn(f"{env_spec.id:<{width}}  {env_spec.description}")
