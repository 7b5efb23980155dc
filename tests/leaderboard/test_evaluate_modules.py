"""The ``evaluate`` modules load from a local path with no Hub access and give the env's own numbers."""

from __future__ import annotations

import pytest

from llm_coop_envs import make
from llm_coop_leaderboard.metrics_evaluate import module_path
from llm_coop_leaderboard.stats import pass_at_k

evaluate = pytest.importorskip("evaluate")


def test_pass_at_k_module_matches_the_estimator() -> None:
    metric = evaluate.load(module_path("coop_pass_at_k"))
    outcomes = [[True, True, False, False, False], [False] * 5, [True] * 5]
    result = metric.compute(predictions=outcomes, references=["a", "b", "c"], k=[1, 2])
    assert result["pass@1"] == pytest.approx((0.4 + 0.0 + 1.0) / 3)
    assert result["pass@2"] == pytest.approx((pass_at_k(5, 2, 2) + 0.0 + 1.0) / 3)


def test_return_module_reproduces_the_writing_env_score() -> None:
    env = make("coop_abstract_expansion-v0")
    task = env.tasks.get(env.task_ids("test")[0])
    sentences = task.fields["abstract"].split(". ")
    texts = [". ".join(sentences[: len(sentences) // 2]) * 3, ". ".join(sentences[len(sentences) // 2 :]) * 3]
    score = env.score(task, dict(zip(env.possible_agents, texts, strict=True)))
    metric = evaluate.load(module_path("coop_return"), config_name="coop_abstract_expansion-v0")
    result = metric.compute(predictions=[texts, ["too short", "also short"]], references=[task.task_id] * 2)
    assert result["episodes"] == 2
    assert result["return"] == pytest.approx(score.breakdown["return"] / 2)
    assert result["joint_reward"] == pytest.approx(score.joint / 2)
    assert set(result) == {"return", "structure", "style", "coherence", "joint_reward", "episodes"}


def test_return_module_rejects_a_wrong_number_of_texts() -> None:
    metric = evaluate.load(module_path("coop_return"), config_name="coop_writing-v0")
    with pytest.raises(ValueError, match="agents"):
        metric.compute(predictions=[["only one text"]], references=["post-004"])


def test_return_module_scores_code_in_the_sandbox() -> None:
    env = make("coop_coding-v0")
    task = env.tasks.get(env.task_ids("test")[0])
    texts = [task.fields["reference_aux"], task.fields["reference_main"]]
    metric = evaluate.load(module_path("coop_return"), config_name="coop_coding-v0")
    result = metric.compute(predictions=[texts], references=[task.task_id])
    assert {"return", "structure", "syntax", "tests", "cooperation"} <= set(result)
    assert result["tests"] == pytest.approx(1.0)
