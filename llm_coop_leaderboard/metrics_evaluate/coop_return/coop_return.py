"""``coop_return``: the normalised joint return of llm-coop-envs tasks, as an ``evaluate`` metric.

Each prediction is one joint action (one text per agent, in the env's ``possible_agents`` order), each
reference the id of the task it answers. The env named by ``config_name`` (default ``coop_writing-v0``)
scores every joint action with its own reward (coding: tests run in the sandbox, batched). Results are
means over episodes of ``return`` (joint reward / maximum) and of each normalised component the env reports
(writing: structure, style, coherence; coding: structure, syntax, tests, cooperation), plus the mean raw
``joint_reward`` and the number of ``episodes``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import evaluate

from llm_coop_envs import make
from llm_coop_leaderboard.scoring import episode_metrics

_DESCRIPTION = __doc__
_CITATION = """\
@article{magrpo2025,
  title   = {LLM Collaboration With Multi-Agent Reinforcement Learning},
  journal = {arXiv preprint arXiv:2508.04652},
  year    = {2025}
}
"""
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of joint actions, each a list of strings (one per agent, in possible_agents order).
    references: list of task ids (strings) of the env's dataset.
    env_kwargs: optional dict of keyword arguments for ``make(config_name, **env_kwargs)``.
Returns:
    return, the components the env reports, joint_reward (means over episodes), episodes.
Examples:
    >>> metric = evaluate.load(module_path("coop_return"), config_name="coop_writing-v0")
    >>> metric.compute(predictions=[["A short text.", "A longer text."]], references=["post-004"])["return"]
    0.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CoopReturn(evaluate.Metric):
    """Mean normalised joint return (and components) of joint actions, scored by the env itself."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("string")), "references": datasets.Value("string")}
            ),
        )

    def _env_id(self) -> str:
        return "coop_writing-v0" if self.config_name in (None, "default") else str(self.config_name)

    def _compute(
        self,
        predictions: Sequence[Sequence[str]],
        references: Sequence[str],
        env_kwargs: Mapping[str, Any] | None = None,
    ) -> dict[str, float]:
        env = make(self._env_id(), **dict(env_kwargs or {}))
        agents = list(env.possible_agents)
        items = []
        for index, (texts, task_id) in enumerate(zip(predictions, references, strict=True)):
            if len(texts) != len(agents):
                raise ValueError(f"predictions[{index}] has {len(texts)} texts; {self._env_id()} has agents {agents}")
            items.append((env.tasks.get(task_id), dict(zip(agents, texts, strict=True))))
        score_many = getattr(env, "score_many", None)
        scores = score_many(items) if callable(score_many) else [env.score(task, acts) for task, acts in items]
        per_episode = [episode_metrics(score.breakdown) for score in scores]
        names = sorted(set.intersection(*(set(m) for m in per_episode))) if per_episode else []
        result = {name: math.fsum(m[name] for m in per_episode) / len(per_episode) for name in names}
        result["joint_reward"] = math.fsum(s.joint for s in scores) / len(scores) if scores else 0.0
        result["episodes"] = len(scores)
        return result
