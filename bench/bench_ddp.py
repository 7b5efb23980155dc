"""Step time of data parallelism: one process against `torchrun --nproc-per-node N`, same global batch.

    python bench/bench_ddp.py                                   # embedded model, coop_writing-v0, N = 2
    python bench/bench_ddp.py --model smollm2-135m-instruct --env coop_coding-v0 --max-new-tokens 128

Both sides run `llm-coop train` with `--tasks-per-step B` (default B = N) for `--steps` steps, one torch
thread per process, and report the mean `time/step_s` of the steps after the first (the first warms up),
read from metrics.jsonl; the weights they end with are compared as well (they must agree within float
tolerance, or the comparison is void). On a CPU machine N processes share its cores: the speed-up can only
reach N when it has N free cores. Sampling: the model's built-in defaults (llm-coop models).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _flags(args: argparse.Namespace, out: Path) -> list[str]:
    flags = ["--env", args.env, "--model", args.model, "--steps", str(args.steps), "--tasks-per-step", str(args.tasks)]
    flags += ["--num-generations", "4", "--max-new-tokens", str(args.max_new_tokens), "--eval-tasks", "1"]
    flags += ["--eval-every", "0", "--eval-seeds", "1", "--threads", "1", "--no-progress", "--output-dir", str(out)]
    return flags


def _run(cmd: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


def _step_times(out: Path) -> list[float]:
    return [json.loads(line)["time/step_s"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _max_weight_gap(a: Path, b: Path) -> float:
    import torch
    from safetensors.torch import load_file

    gap = 0.0
    for agent in sorted((a / "final").iterdir()):
        for name in sorted(p.name for p in agent.glob("*.safetensors")):
            wa, wb = load_file(agent / name), load_file(b / "final" / agent.name / name)
            gap = max(gap, *(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa))
    return gap if torch.isfinite(torch.tensor(gap)) else float("inf")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded")
    p.add_argument("--env", default="coop_writing-v0")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--tasks", type=int, default=None, help="tasks per step (default: --nproc)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON")
    args = p.parse_args()
    args.tasks = args.tasks or args.nproc
    root = Path(tempfile.mkdtemp(prefix="bench-ddp-"))
    one, many = root / "one", root / "many"
    wall_one = _run([sys.executable, "-m", "baselines.cli", "train", *_flags(args, one)])
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc)]
    wall_many = _run([*launcher, "-m", "baselines.cli", "train", *_flags(args, many)])
    t_one, t_many = _step_times(one)[1:], _step_times(many)[1:]
    result = {
        "setting": {k: v for k, v in vars(args).items() if k != "out"} | {"cpus": os.cpu_count()},
        "one_process_step_s": sum(t_one) / len(t_one),
        f"torchrun_{args.nproc}_step_s": sum(t_many) / len(t_many),
        "speedup": (sum(t_one) / len(t_one)) / (sum(t_many) / len(t_many)),
        "wall_s": {"one_process": wall_one, f"torchrun_{args.nproc}": wall_many},
        "max_weight_gap": _max_weight_gap(one, many),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
