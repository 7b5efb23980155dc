"""``coop_pass_at_k``: the unbiased pass@k estimator (Chen et al. 2021) as an ``evaluate`` metric.

Unlike ``code_eval`` it executes nothing: each prediction is the list of per-sample outcomes of one task
(``True`` when every test passed, as decided by the coding env in its sandbox). For a task with ``n``
samples of which ``c`` passed, ``pass@k = 1 - C(n - c, k) / C(n, k)``; the result is the mean over tasks.
Every task must have at least ``k`` samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import evaluate

from llm_coop_leaderboard.stats import pass_at_k

_DESCRIPTION = __doc__
_CITATION = """\
@article{chen2021codex,
  title   = {Evaluating Large Language Models Trained on Code},
  journal = {arXiv preprint arXiv:2107.03374},
  year    = {2021}
}
"""
_KWARGS_DESCRIPTION = """
Args:
    predictions: list (one per task) of lists of booleans (one per sample: all tests passed).
    references: list of task ids (strings), one per task.
    k: list of k values (default [1]).
Returns:
    pass@k for each k: the mean over tasks of the unbiased estimate.
Examples:
    >>> metric = evaluate.load(module_path("coop_pass_at_k"))
    >>> metric.compute(predictions=[[True, True, False, False, False]], references=["t"], k=[1])
    {'pass@1': 0.4}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CoopPassAtK(evaluate.Metric):
    """Mean unbiased pass@k over tasks from per-sample pass/fail outcomes."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("bool")), "references": datasets.Value("string")}
            ),
        )

    def _compute(
        self, predictions: Sequence[Sequence[bool]], references: Sequence[str], k: Sequence[int] = (1,)
    ) -> dict[str, float]:
        if len(set(references)) != len(references):
            raise ValueError("references must name each task once (one list of sample outcomes per task)")
        result = {}
        for value in k:
            scores = [pass_at_k(len(outcomes), sum(map(bool, outcomes)), int(value)) for outcomes in predictions]
            result[f"pass@{value}"] = sum(scores) / len(scores) if scores else 0.0
        return result
