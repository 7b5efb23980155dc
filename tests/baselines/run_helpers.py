"""Helpers of the learner tests that kill and resume runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import baselines.training as training


def metric_rows(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl without the `time/*` keys (which differ between identical runs)."""
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")} for line in path.open()]


@contextmanager
def ctrl_c_at_step(monkeypatch: pytest.MonkeyPatch, step: int) -> Iterator[None]:
    """Within the block, training step ``step`` (0-based) is interrupted as if by Ctrl-C."""
    real, calls = training.train_step, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == step + 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_step", interrupted)
    try:
        yield
    finally:
        monkeypatch.setattr(training, "train_step", real)
