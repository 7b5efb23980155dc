"""The runner's engine settings: coding rewards on Ray workers (`--reward-workers ray`)."""

from __future__ import annotations

import pytest
from run_helpers import metric_rows

from baselines.config import RunConfig, env_kwargs_of
from baselines.training import train


def _coding_run(out, **kw) -> RunConfig:
    base = dict(env="coop_coding-v0", num_generations=2, max_new_tokens=24, steps=2, eval_tasks=1, eval_seeds=1)
    return RunConfig(**{**base, "eval_every": 0, "output_dir": out, **kw})


def test_ray_reward_workers_become_the_coding_envs_sandbox_argument():
    fields = RunConfig(env="coop_coding-v0", reward_workers="ray").to_json()
    assert env_kwargs_of(fields)["sandbox"] == "ray"
    assert "sandbox" not in env_kwargs_of(RunConfig(env="coop_coding-v0").to_json())


def test_ray_reward_workers_on_a_writing_env_are_refused_before_any_model_loads(tmp_path):
    with pytest.raises(ValueError, match="computes its rewards in-process"):
        train(RunConfig(env="coop_writing-v0", reward_workers="ray", output_dir=tmp_path), "magrpo", progress=False)


@pytest.mark.ray
def test_a_run_with_ray_reward_workers_logs_what_the_local_sandbox_gives(tmp_path):
    pytest.importorskip("ray")
    from llm_coop_envs.sandbox import ray_pool

    train(_coding_run(tmp_path / "local"), "magrpo", progress=False)
    try:
        train(_coding_run(tmp_path / "ray", reward_workers="ray"), "magrpo", progress=False)
        box = ray_pool._shared["bwrap"]
        assert box.backend.startswith("ray+") and box.actors >= 1
    finally:
        ray_pool._close_shared()
    assert metric_rows(tmp_path / "ray" / "metrics.jsonl") == metric_rows(tmp_path / "local" / "metrics.jsonl")
