"""The registry: ids, versions, errors, kwargs merging, JSON specs."""

from __future__ import annotations

import json

import pytest

import llm_coop_envs
from llm_coop_envs import EnvSpec, RegistryError, make, pprint_registry, register, registry_ids, spec


def test_listing_and_pprint() -> None:
    assert {"coop_writing-v0", "coop_abstract_expansion-v0"} <= set(registry_ids())
    lines: list[str] = []
    pprint_registry(print_fn=lines.append)
    assert any(line.startswith("coop_writing-v0") for line in lines)


def test_unversioned_id_resolves_to_newest() -> None:
    register("tests/echo-v0", "llm_coop_envs.summarisation:SummarisationEnv", kwargs={"max_turns": 1})
    register("tests/echo-v2", "llm_coop_envs.summarisation:SummarisationEnv", kwargs={"max_turns": 2})
    assert spec("tests/echo").id == "tests/echo-v2"
    assert make("tests/echo").max_turns == 2
    with pytest.raises(RegistryError, match="no version v1; registered versions: tests/echo-v0, tests/echo-v2"):
        spec("tests/echo-v1")
    with pytest.raises(RegistryError, match="already registered"):
        register("tests/echo-v0", "llm_coop_envs.summarisation:SummarisationEnv")


def test_unknown_and_malformed_ids_list_what_exists() -> None:
    with pytest.raises(
        RegistryError, match="unknown environment id 'coop_chess-v0'; registered ids: .*coop_writing-v0"
    ):
        make("coop_chess-v0")
    with pytest.raises(RegistryError, match="malformed"):
        spec("bad id with spaces")


def test_kwargs_merge_and_spec_records_them() -> None:
    base = spec("coop_writing-v0")
    env = make("coop_writing-v0", max_turns=2, reward_mode="independent")
    assert env.max_turns == 2 and env.reward_mode == "independent"
    assert env.spec.kwargs["max_turns"] == 2 and env.spec.id == base.id
    assert env.spec.spec_hash() != base.spec_hash()
    assert make("coop_writing-v0").spec.spec_hash() == base.spec_hash()


def test_spec_is_frozen_and_json_round_trips() -> None:
    original = EnvSpec("ns/thing-v3", "pkg.mod:Cls", kwargs={"a": [1, 2], "b": {"c": None}}, description="d")
    with pytest.raises(AttributeError):
        original.id = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        original.kwargs["a"] = 5  # type: ignore[index]
    restored = EnvSpec.from_json(original.to_json())
    assert restored == original and restored.spec_hash() == original.spec_hash()
    assert json.loads(original.to_json())["kwargs"] == {"a": [1, 2], "b": {"c": None}}
    assert (original.namespace, original.name, original.version) == ("ns", "thing", 3)
    with pytest.raises(RegistryError, match=r"kwargs.fn is a function"):
        EnvSpec("x-v0", "a:b", kwargs={"fn": lambda: 0})


def test_version_is_the_installed_distributions() -> None:
    from importlib import metadata

    assert llm_coop_envs.__version__ == metadata.version("llm-coop-envs")
