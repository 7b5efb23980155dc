"""Steps of several tasks, and data parallelism under torchrun (2 gloo processes on CPU, the embedded model)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from run_helpers import metric_rows
from safetensors.torch import load_file
from toy_env import ToyEnv

import baselines.training as training
from baselines.algorithm import roll_out_task, train_on_tasks
from baselines.config import RunConfig
from baselines.distributed import DistContext, shard
from baselines.lm.policies import Policies
from baselines.magrpo import MAGRPO, MAGRPOConfig
from baselines.training import check_world, task_for_step, train
from llm_coop_envs import make

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--env",
    "coop_writing-v0",
    "--num-generations",
    "2",
    "--max-new-tokens",
    "48",
    "--eval-tasks",
    "1",
    "--eval-seeds",
    "1",
    "--eval-every",
    "0",
    "--tasks-per-step",
    "2",
    "--lr",
    "1e-3",
    "--no-progress",
]


def tiny_run(out: Path, steps: int, **kw) -> RunConfig:
    base = dict(
        env="coop_writing-v0",
        num_generations=2,
        max_new_tokens=48,
        eval_tasks=1,
        eval_seeds=1,
        eval_every=0,
        tasks_per_step=2,
        lr=1e-3,
        steps=steps,
        output_dir=out,
    )
    return RunConfig(**{**base, **kw})


def torchrun(out: Path, steps: int, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "baselines.cli", "train", *TINY, "--steps", str(steps), "--output-dir", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def finished(proc: subprocess.Popen, timeout: float = 300) -> str:
    output, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, output[-3000:]
    return output


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return {
        f"{agent.name}/{k}": v
        for agent in sorted((out / "final").iterdir())
        for k, v in load_file(agent / "model.safetensors").items()
    }


def assert_same_run(a: Path, b: Path) -> None:
    """The same weights (within float tolerance: sums over ranks add in another order) and the same metrics."""
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5, msg=key)
    rows_a, rows_b = metric_rows(a / "metrics.jsonl"), metric_rows(b / "metrics.jsonl")
    assert any(row["grad_norm/summary"] > 0 for row in rows_a), "no step had a gradient: nothing was compared"
    assert [r.keys() for r in rows_a] == [r.keys() for r in rows_b]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for key in ra:
            assert ra[key] == pytest.approx(rb[key], rel=1e-3, abs=1e-4), key
    evals_a = [json.loads(line)["eval/joint_mean"] for line in (a / "eval.jsonl").open()]
    evals_b = [json.loads(line)["eval/joint_mean"] for line in (b / "eval.jsonl").open()]
    assert evals_a == pytest.approx(evals_b, abs=1e-6)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The reference: 3 steps of 2 tasks each in one process."""
    out = tmp_path_factory.mktemp("one") / "run"
    train(tiny_run(out, 3), "magrpo", progress=False)
    return out


def test_two_gloo_ranks_give_the_parameters_and_metrics_of_one_process(one_process, tmp_path):
    out = tmp_path / "ddp"
    finished(torchrun(out, 3))
    assert_same_run(one_process, out)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3, "rank 0 alone writes the metrics"


def test_a_run_killed_under_torchrun_resumes_to_the_same_end(one_process, tmp_path):
    out = tmp_path / "killed"
    proc = torchrun(out, 3, "--save-every", "1")
    deadline = time.time() + 300
    while not _checkpoint_at(out, 1):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, mid-run
    proc.communicate()
    finished(torchrun(out, 3, "--save-every", "1", "--resume"))
    assert_same_run(one_process, out)


def _checkpoint_at(out: Path, step: int) -> bool:
    path = out / "checkpoint.pt"
    if not path.exists():
        return False
    try:
        return torch.load(path, weights_only=False)["step"] >= step
    except Exception:  # being replaced right now
        return False


def test_an_accumulated_step_sums_each_tasks_gradient_over_the_step():
    """train_on_tasks on two trees gives each agent the mean of the two tasks' gradients (captured by the
    reduce hook just before the optimiser steps)."""
    env = ToyEnv()
    run = RunConfig(num_generations=3, max_new_tokens=6, finetune="full", lr=1e-3)
    algorithm = MAGRPO(MAGRPOConfig())
    policies = Policies(env.possible_agents, None, "full")
    trees = []
    for k in range(2):
        torch.manual_seed(k)
        obs, _ = env.reset(options={"task_id": f"train-{k}"})
        trees.append(roll_out_task(algorithm, env, obs, policies, run))
    captured: list[list[torch.Tensor]] = []

    def capture(params):
        captured.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params])

    frozen = {a: torch.optim.SGD(policies.parameters(a), lr=0.0) for a in env.possible_agents}
    train_on_tasks(algorithm, trees, policies, frozen, run, None, 2, capture)
    per_task = []
    for tree in trees:
        captured_before = len(captured)
        train_on_tasks(algorithm, [tree], policies, frozen, run, None, 1, capture)
        per_task.append(captured[captured_before:])
    for agent_index in range(len(env.possible_agents)):
        both = captured[agent_index]
        mean = [(g0 + g1) / 2 for g0, g1 in zip(per_task[0][agent_index], per_task[1][agent_index], strict=True)]
        for got, want in zip(both, mean, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_a_step_of_several_tasks_trains_on_the_runs_next_tasks_and_logs_their_mean(tmp_path, monkeypatch):
    seen: list[tuple[str, float]] = []
    real = training.roll_out_task

    def recording(*args):
        tree = real(*args)
        seen.append((args[6], tree.stats["reward/joint_mean"]))  # (task id, the task's mean joint reward)
        return tree

    monkeypatch.setattr(training, "roll_out_task", recording)
    out = tmp_path / "run"
    train(tiny_run(out, 2, tasks_per_step=3), "magrpo", progress=False)
    rows = metric_rows(out / "metrics.jsonl")
    ids = make("coop_writing-v0").task_ids("train")
    assert [task for task, _ in seen] == [task_for_step(ids, 0, k) for k in range(6)]
    for step, row in enumerate(rows):
        rewards = [r for _, r in seen[3 * step : 3 * step + 3]]
        assert row["reward/joint_mean"] == pytest.approx(sum(rewards) / 3, rel=1e-9)
        assert {"loss/summary", "grad_norm/summary", "advantage/abs_mean"} <= row.keys()


def test_torchrun_refuses_tasks_that_do_not_split_over_the_ranks_and_stateful_algorithms():
    two = DistContext(rank=0, world_size=2)
    with pytest.raises(ValueError, match="multiple of the 2 processes"):
        check_world(RunConfig(tasks_per_step=3), MAGRPO(MAGRPOConfig()), two)

    class Counting(MAGRPO):
        def state_dict(self):
            return {"seen": 1}

    with pytest.raises(ValueError, match="keeps state of its own"):
        check_world(RunConfig(tasks_per_step=2), Counting(MAGRPOConfig()), two)
    check_world(RunConfig(tasks_per_step=3), MAGRPO(MAGRPOConfig()), DistContext())


def test_shard_gives_each_rank_a_contiguous_block():
    assert [shard(range(6), r, 3) for r in range(3)] == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ValueError, match="do not split evenly"):
        shard(range(5), 0, 2)
