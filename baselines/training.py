"""The training loop shared by every algorithm: seeding, task order, logging, evaluation, checkpoints.

Reproducibility: the randomness of step s (task choice and sampling) is seeded from (seed, s) alone, and
a checkpoint holds the trainable weights, optimiser states, RNG states, the step and the length of
metrics.jsonl at that step. A run killed at any moment and resumed with `--resume` therefore ends with the
same weights and the same metrics (apart from `time/*` keys) as an uninterrupted run.

With `tasks_per_step` > 1 a step rolls out that many tasks (task k of the run is seeded and chosen from
(seed, k) alone) and makes one accumulated update; under torchrun the tasks are shared over the ranks, each
agent's gradient is all-reduced, and rank 0 writes every file (baselines/distributed.py, docs/scaling.md).

A run directory holds one run: training into a directory that holds another run is refused unless
`--overwrite`; `--resume` checks the stored config.json and allows only `--steps` to grow; Ctrl-C writes a
checkpoint of the last finished step and says how to continue.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from baselines.algorithm import (
    Algorithm,
    ModuleSet,
    PolicyInfo,
    TaskTree,
    load_algorithm,
    mean_stats,
    roll_out_task,
    train_on_tasks,
    train_step,
)
from baselines.config import RESUMABLE_FIELDS, RunConfig, env_kwargs_of
from baselines.distributed import DistContext, init_distributed, shard
from baselines.heldout import RUN_FIELD_DEFAULTS, eval_seeds, heldout_eval
from baselines.lm.embedded import EMBEDDED_DIR
from baselines.lm.loading import resolve_model
from baselines.lm.policies import Policies

if TYPE_CHECKING:
    from baselines.lm.vllm_rollout import VLLMSampler


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + 17) % (2**31 - 1)


def task_for_step(task_ids: list[str], seed: int, step: int) -> str:
    """Epochs over the training tasks, each in its own seeded random order."""
    epoch, index = divmod(step, len(task_ids))
    order = np.random.default_rng([seed, epoch]).permutation(len(task_ids))
    return task_ids[int(order[index])]


def build_policies(
    cfg: RunConfig, agents: list[str], need_reference: bool = False, device: str | None = None
) -> Policies:
    models = list(cfg.agent_models) if cfg.agent_models else cfg.model
    names = models if isinstance(models, list) else [models]
    embedded = all(resolve_model(name) == str(EMBEDDED_DIR) for name in names)
    finetune = ("full" if embedded else "lora") if cfg.finetune == "auto" else cfg.finetune
    torch.manual_seed(cfg.seed)  # LoRA initialisation
    return Policies(
        agents,
        models,
        finetune,
        cfg.lora_r,
        cfg.lora_alpha,
        list(cfg.lora_targets) or None,
        chat_template=cfg.chat_template,
        need_reference=need_reference,
        dtype=torch.bfloat16 if cfg.bf16 else torch.float32,
        device=device or cfg.device,
    )


def build_sampler(run: RunConfig, policies: Policies) -> VLLMSampler | None:
    """The rollout sampler of ``run.rollout_backend``: None for ``hf`` (the policies sample themselves), a
    :class:`baselines.lm.vllm_rollout.VLLMSampler` serving every agent for ``vllm``."""
    if run.rollout_backend == "hf":
        return None
    from baselines.lm.vllm_rollout import VLLMSampler, VLLMSettings

    settings = VLLMSettings(
        mode=run.vllm_mode,
        url=run.vllm_url,
        gpu_memory_utilization=run.vllm_gpu_memory_utilization,
        max_lora_rank=run.lora_r,
        # a colocated engine on a GPU frees its memory while the trainer updates
        sleep_between_phases=run.vllm_mode == "colocate" and run.device.startswith("cuda"),
    )
    return VLLMSampler(policies, settings, seed=run.seed)


def run_eval(make_eval_env, policies: Policies, test_ids: list[str], cfg: RunConfig) -> dict[str, Any]:
    """The held-out evaluation row (the same code as `llm-coop eval --policy RUN --heldout`)."""
    return heldout_eval(make_eval_env, policies, test_ids, cfg.sampling(), eval_seeds(cfg.eval_seeds))


def save_checkpoint(
    path: Path,
    step: int,
    policies: Policies,
    optimizers: dict,
    metrics_bytes: int,
    eval_bytes: int,
    algorithm_state: dict[str, Any] | None = None,
) -> None:
    """Write atomically: a temp file in the same directory, then os.replace."""
    state = {
        "step": step,
        "algorithm": algorithm_state or {"state": {}, "modules": None},
        "policies": {a: policies.state_dict(a) for a in optimizers},
        "optimizers": {a: opt.state_dict() for a, opt in optimizers.items()},
        "rng": {"torch": torch.random.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
        "metrics_bytes": metrics_bytes,
        "eval_bytes": eval_bytes,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, policies: Policies, optimizers: dict) -> dict:
    state = torch.load(path, weights_only=False)
    for agent, opt in optimizers.items():
        policies.load_state_dict(agent, state["policies"][agent])
        opt.load_state_dict(state["optimizers"][agent])
    torch.random.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    return state


def build_modules(algorithm: Algorithm, policies: Policies, run: RunConfig) -> ModuleSet | None:
    """The algorithm's extra modules on the run's device with their optimisers (None if it has none). Their
    initialisation is seeded from the run's seed without touching the RNG stream the rollouts use."""
    info = PolicyInfo(tuple(policies.agents), {a: policies.hidden_size(a) for a in policies.agents}, run.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(step_seed(run.seed, -1))
        modules = algorithm.trainable_modules(info)
    return ModuleSet(modules, run.device) if modules else None


def restore_algorithm(state: dict[str, Any], algorithm: Algorithm, modules: ModuleSet | None) -> None:
    """Restore the algorithm's state and modules from a checkpoint; an algorithm with state (or modules) and a
    checkpoint without them is an error, never a silent restart of the critic."""
    saved = state.get("algorithm")
    if saved is None:
        if algorithm.state_dict() or modules is not None:
            raise RunDirError(
                f"--resume: the checkpoint holds no state of {type(algorithm).__name__}, which keeps state or "
                "modules; resuming would silently restart them"
            )
        return
    algorithm.load_state_dict(saved["state"])
    if (saved["modules"] is None) != (modules is None):
        raise RunDirError(f"--resume: the checkpoint's modules do not match {type(algorithm).__name__}'s")
    if modules is not None:
        modules.load_state_dict(saved["modules"])


def _truncate(path: Path, size: int) -> None:
    with open(path, "ab") as fh:
        fh.truncate(size)


def make_optimizers(policies: Policies, agents: list[str], cfg: RunConfig) -> dict[str, torch.optim.Optimizer]:
    """One AdamW per agent over its trainable tensors, as the fused multi-tensor kernel (one update kernel per
    step instead of several operations per tensor)."""
    return {
        a: torch.optim.AdamW(policies.parameters(a), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        for a in agents
    }


class RunDirError(ValueError):
    """The output directory holds another run, or a run that the given config cannot resume."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C during training: a checkpoint of the last finished step was written."""

    def __init__(self, step: int, output_dir: Path) -> None:
        super().__init__(f"interrupted at step {step}; continue with --resume (output dir {output_dir})")
        self.step, self.output_dir = step, output_dir


@dataclass
class RunFiles:
    """The files of one run directory."""

    root: Path

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def evals(self) -> Path:
        return self.root / "eval.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    def holds_a_run(self) -> bool:
        return any(p.exists() for p in (self.metrics, self.evals, self.checkpoint, self.config))


def run_record(run: RunConfig, algorithm: Algorithm) -> dict[str, Any]:
    """What config.json holds: the algorithm's name, every runner field, and the algorithm's own settings."""
    cfg = algorithm.cfg
    own = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type) else {}
    return {"algo": algorithm_name(algorithm), **run.to_json(), "algorithm_config": own}


def algorithm_name(algorithm: Algorithm) -> str:
    """The name that finds the algorithm again: its registry name, else its ``module:Class`` path."""
    cls = type(algorithm)
    from baselines.algorithm import available_algorithms

    if available_algorithms().get(cls.name) == f"{cls.__module__}:{cls.__qualname__}":
        return cls.name
    return f"{cls.__module__}:{cls.__qualname__}"


def check_run_dir(files: RunFiles, record: dict[str, Any], resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs: a new run never lands on another one (unless ``overwrite``), and a resumed run must
    have the stored config except for :data:`RESUMABLE_FIELDS` (``steps`` may only grow)."""
    if resume:
        if not files.checkpoint.exists():
            raise RunDirError(f"--resume: no checkpoint at {files.checkpoint}; start without --resume")
        if not files.config.exists():
            raise RunDirError(f"--resume: {files.config} is missing, cannot check that this is the same run")
        stored = {**RUN_FIELD_DEFAULTS, **json.loads(files.config.read_text())}  # a run older than the fields
        for key in sorted(set(stored) | set(record)):
            if key not in RESUMABLE_FIELDS and stored.get(key) != record.get(key):
                raise RunDirError(
                    f"--resume: field {key!r} is {record.get(key)!r} here but {stored.get(key)!r} in the run "
                    f"in {files.root}; only --steps may change (upwards)"
                )
        if record["steps"] < stored["steps"]:
            raise RunDirError(f"--resume: --steps {record['steps']} is below the run's {stored['steps']} steps")
        return
    if files.holds_a_run() and not overwrite:
        raise RunDirError(
            f"{files.root} already holds a run; continue it with --resume, or replace it with --overwrite"
        )
    if overwrite:
        for path in (files.metrics, files.evals, files.checkpoint, files.config, files.root / "summary.json"):
            path.unlink(missing_ok=True)


def train(run: RunConfig, algorithm: Algorithm | str, progress: bool = True, make_env=None) -> dict[str, Any]:
    """Train ``algorithm`` (an instance, or a name with its default settings) with the runner settings
    ``run``; returns the summary also written to summary.json. ``make_env(id, max_turns=..., dataset=...)``
    defaults to :func:`baselines.untrained.make_env`: ``llm_coop_envs.make``, plus ``single:<id>`` (one agent
    writes both parts: single-agent GRPO). The policies train on the tasks of ``run.train_split`` and are
    evaluated on ``run.eval_split``; a split the dataset lacks fails before any model loads. Ctrl-C writes a
    checkpoint and raises TrainingInterrupted."""
    if make_env is None:
        from baselines.untrained import make_env
    algorithm = load_algorithm(algorithm) if isinstance(algorithm, str) else algorithm
    run.validate()
    algorithm.check_run(run)
    dist = init_distributed(run.device)
    try:
        check_world(run, algorithm, dist)
        files = RunFiles(Path(run.output_dir or Path("runs") / algorithm.name))
        record = run_record(run, algorithm)
        dist.on_main(lambda: check_run_dir(files, record, run.resume, run.overwrite))
        torch.set_num_threads(run.threads)
        random.seed(run.seed)
        np.random.seed(run.seed % 2**32)
        env_kwargs = env_kwargs_of(run.to_json())
        env = _make_env(make_env, run, env_kwargs)
        session = Session(run, algorithm, env, lambda: make_env(run.env, **env_kwargs), files, dist=dist)
        try:
            start = session.begin()
            if dist.is_main:
                files.config.write_text(json.dumps(record, indent=2) + "\n")
            session.loop(start, progress and dist.is_main)
            return session.finish()
        finally:
            session.close()
    finally:
        dist.close()


def check_world(run: RunConfig, algorithm: Algorithm, dist: DistContext) -> None:
    """Refuse a torchrun job the runner cannot keep exact: tasks that do not split evenly over the ranks, or
    an algorithm that keeps state of its own (each rank would update its copy from its own tasks only)."""
    if not dist.distributed:
        return
    if run.tasks_per_step % dist.world_size:
        raise ValueError(
            f"config field tasks_per_step={run.tasks_per_step!r}: under torchrun it must be a multiple of the "
            f"{dist.world_size} processes (each rank trains on tasks_per_step / processes tasks per step)"
        )
    if algorithm.state_dict():
        raise ValueError(
            f"{type(algorithm).__name__} keeps state of its own, which data parallelism cannot keep in sync; "
            "train it in one process"
        )


def _make_env(make_env, run: RunConfig, env_kwargs: dict[str, Any]):
    try:
        return make_env(run.env, **env_kwargs)
    except TypeError as error:
        if "sandbox" in env_kwargs and "sandbox" in str(error):
            raise ValueError(
                f"config field reward_workers='ray': {run.env} computes its rewards in-process (only coding envs "
                "run code, and only their rewards go to Ray workers)"
            ) from None
        raise


def split_task_ids(env: Any, field: str, split: str) -> list[str]:
    """The task ids of ``split`` of the env's dataset; a ValueError naming the config ``field`` and listing the
    dataset's splits when it has no such split (or the split holds no task)."""
    try:
        ids = list(env.task_ids(split))
    except ValueError as error:  # the env's message lists the dataset's splits
        raise ValueError(f"config field {field}={split!r}: {error}") from None
    if not ids:
        raise ValueError(f"config field {field}={split!r}: the split holds no tasks")
    return ids


@dataclass
class Session:
    """One training run in progress: its env, policies, optimisers and files."""

    run: RunConfig
    algorithm: Algorithm
    env: Any
    make_eval_env: Callable[[], Any]
    files: RunFiles
    writer: Any = None
    dist: DistContext = dataclasses.field(default_factory=DistContext)

    def __post_init__(self) -> None:
        self.agents = list(self.env.possible_agents)
        self.train_ids = split_task_ids(self.env, "train_split", self.run.train_split)  # before any model loads
        test_ids = split_task_ids(self.env, "eval_split", self.run.eval_split)
        self.test_ids = test_ids[: self.run.eval_tasks] if self.run.eval_tasks else test_ids
        need_reference = self.algorithm.reference_kl_coef() != 0
        device = self.dist.device(self.run.device)
        self.policies = build_policies(self.run, self.agents, need_reference, device)
        self.optimizers = make_optimizers(self.policies, self.agents, self.run)
        self.modules = build_modules(self.algorithm, self.policies, self.run)
        self.sampler = build_sampler(self.run, self.policies)

    def begin(self) -> int:
        """The first step to run: 0 for a new run (after the step-0 evaluation), the checkpoint's on resume."""
        main = self.dist.is_main
        if main:
            self.files.root.mkdir(parents=True, exist_ok=True)
        if self.run.tensorboard and main:
            self.writer = _tensorboard(self.files.root)
        if self.run.resume:
            state = load_checkpoint(self.files.checkpoint, self.policies, self.optimizers)
            restore_algorithm(state, self.algorithm, self.modules)
            if self.sampler is not None:
                self.sampler.sync()  # the engine samples from the restored weights
            if main:
                _truncate(self.files.metrics, state["metrics_bytes"])
                _truncate(self.files.evals, state["eval_bytes"])
            self.dist.barrier()
            return int(state["step"])
        self.dist.on_main(self._first_eval)
        return 0

    def _first_eval(self) -> None:
        self.files.metrics.write_text("")
        first = {"step": 0, **run_eval(self.make_eval_env, self.policies, self.test_ids, self.run)}
        self.files.evals.write_text(json.dumps(first) + "\n")

    def loop(self, start: int, progress: bool) -> None:
        from tqdm import tqdm

        bar = tqdm(
            total=self.run.steps, initial=start, desc=self.algorithm.name, disable=not progress, dynamic_ncols=True
        )
        step = start
        try:
            for step in range(start, self.run.steps):
                row = self.step(step)
                bar.update(1)
                bar.set_postfix(
                    reward=f"{row['reward/joint_mean']:.2f}", eval=f"{row.get('eval/joint_mean', float('nan')):.2f}"
                )
                if step + 1 == self.run.steps or (step + 1) % self.run.save_every == 0:
                    self.save(step + 1)
        except KeyboardInterrupt:
            if self.dist.is_main:  # no collective here: the other ranks may be gone already
                self._write_checkpoint(step)  # `step` did not finish: the checkpoint holds every step before it
            raise TrainingInterrupted(step, self.files.root) from None
        finally:
            bar.close()
            if self.writer is not None:
                self.writer.close()

    def step(self, step: int) -> dict[str, Any]:
        """Run training step ``step`` (0-based), log it, and evaluate when due."""
        t0 = time.perf_counter()
        stats = self._train_one(step) if self.run.tasks_per_step == 1 else self._train_batch(step)
        if self.sampler is not None:
            self.sampler.sync()  # the engine samples the next step from the updated weights
        row = {"step": step + 1, **stats, "time/step_s": time.perf_counter() - t0}
        every = self.run.eval_every
        if step + 1 == self.run.steps or (every and (step + 1) % every == 0):
            mean = self.dist.on_main(lambda: self._eval(step + 1))
            row["eval/joint_mean"] = mean
        if self.dist.is_main:
            self._log(row, step + 1)
        return row

    def _train_one(self, step: int) -> dict[str, Any]:
        """One task, one update per tree node (``tasks_per_step`` = 1)."""
        seed = step_seed(self.run.seed, step)
        torch.manual_seed(seed)
        task_id = task_for_step(self.train_ids, self.run.seed, step)
        obs, _ = self.env.reset(seed=seed, options={"task_id": task_id})
        return train_step(
            self.algorithm,
            self.env,
            obs,
            self.policies,
            self.optimizers,
            self.run,
            self.modules,
            step,
            task_id,
            sampler=self.sampler,
        )

    def _train_batch(self, step: int) -> dict[str, Any]:
        """``tasks_per_step`` tasks (this rank's share under torchrun), one accumulated update. Task k of the run
        (k = step x tasks_per_step + b) is seeded and chosen from (seed, k) alone, whichever rank runs it."""
        B = self.run.tasks_per_step
        trees: list[TaskTree] = []
        for k in shard(range(step * B, (step + 1) * B), self.dist.rank, self.dist.world_size):
            seed = step_seed(self.run.seed, k)
            torch.manual_seed(seed)
            task_id = task_for_step(self.train_ids, self.run.seed, k)
            obs, _ = self.env.reset(seed=seed, options={"task_id": task_id})
            trees.append(
                roll_out_task(self.algorithm, self.env, obs, self.policies, self.run, step, task_id, self.sampler)
            )
        step_stats, own = train_on_tasks(
            self.algorithm, trees, self.policies, self.optimizers, self.run, self.modules, B, self.dist.all_reduce_grads
        )
        every_task = [row for rank_rows in self.dist.all_gather(own) for row in rank_rows]  # in task order
        return {**mean_stats(every_task), **step_stats}

    def _eval(self, step: int) -> float:
        result = {"step": step, **run_eval(self.make_eval_env, self.policies, self.test_ids, self.run)}
        with open(self.files.evals, "a") as fh:
            fh.write(json.dumps(result) + "\n")
        return result["eval/joint_mean"]

    def _log(self, row: dict[str, Any], step: int) -> None:
        with open(self.files.metrics, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key, value in row.items():
                if key != "step":
                    self.writer.add_scalar(key, value, step)

    def save(self, step: int) -> None:
        """The checkpoint of every step before ``step``, written by rank 0 while the others wait."""
        self.dist.on_main(lambda: self._write_checkpoint(step))

    def _write_checkpoint(self, step: int) -> None:
        sizes = self.files.metrics.stat().st_size, self.files.evals.stat().st_size
        algorithm = {
            "state": self.algorithm.state_dict(),
            "modules": None if self.modules is None else self.modules.state_dict(),
        }
        save_checkpoint(self.files.checkpoint, step, self.policies, self.optimizers, *sizes, algorithm)

    def close(self) -> None:
        """Stop the rollout engine, if one was started."""
        if self.sampler is not None:
            self.sampler.close()
            self.sampler = None

    def finish(self) -> dict[str, Any]:
        """Final weights, summary.json and the reward plot (written by rank 0; every rank returns the summary)."""
        return self.dist.on_main(self._finish)

    def _finish(self) -> dict[str, Any]:
        out = self.files.root
        for agent in self.agents:
            self.policies.save_final(agent, out / "final" / agent)
        evals = [json.loads(line) for line in self.files.evals.read_text().splitlines()]
        summary = {
            "algo": algorithm_name(self.algorithm),
            "env": self.run.env,
            "seed": self.run.seed,
            "steps": self.run.steps,
            "eval_before": evals[0]["eval/joint_mean"],
            "eval_after": evals[-1]["eval/joint_mean"],
            "example_after": evals[-1]["eval/example"],
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        plot_rewards(out, title=f"{self.algorithm.name} on {self.run.env} (seed {self.run.seed})")
        return summary


def plot_rewards(out: Path, title: str = "") -> Path:
    """reward_curve.png: training joint reward (mean of 25-step windows) and held-out evaluations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    reward = [r["reward/joint_mean"] for r in rows]
    window = 25
    smooth = [
        sum(reward[max(0, i - window + 1) : i + 1]) / len(reward[max(0, i - window + 1) : i + 1])
        for i in range(len(reward))
    ]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, smooth, label=f"train joint reward ({window}-step mean)")
    ax.plot([e["step"] for e in evals], [e["eval/joint_mean"] for e in evals], "o-", label="held-out joint reward")
    ax.set_xlabel("step")
    ax.set_ylabel("joint reward")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = out / "reward_curve.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ImportError("--tensorboard needs the 'tensorboard' package: pip install tensorboard") from exc
    return SummaryWriter(str(out / "tensorboard"))
