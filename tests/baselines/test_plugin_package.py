"""The example algorithm package (examples/critic_plugin): found through its entry point, trained by the
runner, and resumed identically after a kill (its running statistics and its value head are checkpointed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import tomllib
import torch
from run_helpers import ctrl_c_at_step, metric_rows
from toy_env import make_toy_env

from baselines import algorithm as algorithm_module
from baselines.algorithm import resolve_algorithm
from baselines.config import RunConfig
from baselines.training import TrainingInterrupted, train

PACKAGE = Path(__file__).resolve().parents[2] / "examples" / "critic_plugin"


@pytest.fixture
def installed(monkeypatch):
    """The package as `pip install -e examples/critic_plugin` would make it visible: importable, and its
    declared entry points in the algorithm group."""
    monkeypatch.syspath_prepend(str(PACKAGE))
    declared = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]["entry-points"]
    points = [SimpleNamespace(name=n, value=v) for n, v in declared[algorithm_module.ENTRY_POINT_GROUP].items()]
    monkeypatch.setattr(algorithm_module.metadata, "entry_points", lambda group: points)
    yield resolve_algorithm("normalised_critic")
    sys.modules.pop("critic_plugin.algo", None)


def small_run(**kw) -> RunConfig:
    base = dict(num_generations=3, max_new_tokens=8, eval_tasks=1, eval_seeds=1, eval_every=0, save_every=1)
    return RunConfig(**{**base, "lr": 1e-3, **kw})


def test_the_example_package_trains_and_resumes_identically(installed, tmp_path, monkeypatch):
    cls = installed
    whole = tmp_path / "whole"
    train(small_run(steps=3, output_dir=whole), cls(cls.config_class()), False, make_toy_env)
    assert json.loads((whole / "config.json").read_text())["algo"] == "normalised_critic"
    state = torch.load(whole / "checkpoint.pt", weights_only=False)["algorithm"]
    assert state["state"]["count"] == 9 and set(state["modules"]["modules"]) == {"value"}  # 3 steps x G
    assert all("critic/loss" in r and "grad_norm/value" in r for r in metric_rows(whole / "metrics.jsonl"))
    cut = tmp_path / "cut"
    with ctrl_c_at_step(monkeypatch, 2), pytest.raises(TrainingInterrupted):
        train(small_run(steps=3, output_dir=cut), cls(cls.config_class()), False, make_toy_env)
    train(small_run(steps=3, output_dir=cut, resume=True), cls(cls.config_class()), False, make_toy_env)
    assert metric_rows(cut / "metrics.jsonl") == metric_rows(whole / "metrics.jsonl")
    assert torch.load(cut / "checkpoint.pt", weights_only=False)["algorithm"]["state"] == state["state"]


def test_the_example_package_gets_a_leaderboard_entry_named_by_its_class(installed, tmp_path):
    from baselines.evaluation import EvalConfig, evaluate
    from llm_coop_leaderboard import load_entry

    cls = installed
    run = tmp_path / "run"
    writing = small_run(steps=1, output_dir=run, env="coop_writing-v0", eval_tasks=1)
    train(writing, cls(cls.config_class()), False)
    result = evaluate(EvalConfig(policy=str(run), root=tmp_path, progress=False, command="llm-coop eval (test)"))
    entry = load_entry(result.entry_path, tmp_path)
    assert entry["method"]["name"] == "Normalised-return critic (example)"
    assert entry["method"]["family"] == "joint-reward" and entry["method"]["config"]["algo"] == "normalised_critic"
