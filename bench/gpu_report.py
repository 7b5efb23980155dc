"""Write bench/README_gpu.md from the files bench/gpu_check.sh leaves in a results directory.

    python bench/gpu_report.py bench/results/gpu > bench/README_gpu.md

Reads ``tests.txt`` (the pytest summary of tests/baselines/test_gpu.py), ``trainer.json``
(bench/bench_trainer.py --out) and ``rollout.json`` (bench/bench_rollout.py --out, present when vllm is
installed), plus the GPU's name and the library versions of this machine.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

TRAINER_COLUMNS = ("impl", "step_s", "tokens_per_s", "gen_frac", "update_frac", "model_peak_mb", "process_peak_mb")


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> list[str]:
    def cell(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    return lines + ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]


def _machine() -> list[str]:
    import torch
    import transformers

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    return [
        f"- GPU: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}, transformers {transformers.__version__}"
    ]


def _rollout_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = report.get("rows") or report.get("results") or report.get("best") or []
    return [row for row in rows if isinstance(row, dict)]


def report(results: Path) -> str:
    lines = [
        "# GPU check (`bash bench/gpu_check.sh`)",
        "",
        f"Written {time.strftime('%Y-%m-%d')} by bench/gpu_report.py.",
    ]
    lines += ["", *_machine(), ""]
    tests = results / "tests.txt"
    summary = tests.read_text().strip().splitlines()[-1] if tests.exists() else "not run"
    lines += ["## CUDA tests (`pytest -m gpu tests/baselines/test_gpu.py`)", "", f"    {summary}", ""]
    trainer = results / "trainer.json"
    if trainer.exists():
        data = json.loads(trainer.read_text())
        lines += [
            "## One MAGRPO step, SmolLM2-135M-Instruct, coop_coding-v0, G = 4, 128 new tokens (`bench_trainer.py`)",
            "",
        ]
        lines += [*_table(data["best"], TRAINER_COLUMNS), ""]
    rollout = results / "rollout.json"
    if rollout.exists():
        rows = _rollout_rows(json.loads(rollout.read_text()))
        columns = tuple(dict.fromkeys(k for row in rows for k in row))
        lines += ["## Rollout backends (`bench_rollout.py`)", "", *_table(rows, columns), ""]
    else:
        lines += ["## Rollout backends", "", "Not measured: the `vllm` package was not installed.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(Path(sys.argv[1])))
