"""Our task metrics as Hugging Face ``evaluate`` modules, loadable from a local path without the Hub.

    import evaluate
    from llm_coop_leaderboard.metrics_evaluate import module_path

    metric = evaluate.load(module_path("coop_return"), config_name="coop_writing-v0")
    metric.compute(predictions=[["summary text", "elaboration text"]], references=["post-004"])
    # {"return": ..., "structure": ..., "style": ..., "coherence": ..., "joint_reward": ..., "episodes": 1}

    pass_k = evaluate.load(module_path("coop_pass_at_k"))
    pass_k.compute(predictions=[[True, False, False, True, False]], references=["task-1"], k=[1, 2])
    # {"pass@1": 0.4, "pass@2": 0.7}

* ``coop_return``: scores joint actions with the environment itself (``config_name`` = env id; code of
  coding envs runs in the sandbox). ``predictions``: one list of texts per episode, in the env's
  ``possible_agents`` order; ``references``: task ids. Returns the mean normalised joint return, the mean of
  each normalised component the env reports, and the mean raw joint reward.
* ``coop_pass_at_k``: the unbiased pass@k (Chen et al. 2021). ``predictions``: per task, one boolean per
  sample (all tests passed); ``references``: task ids; ``k``: a list of k values.

Needs the optional extra ``evaluate`` (``pip install 'llm-coop-envs[evaluate]'``), which pulls in
``datasets``, ``pyarrow`` and ``pandas``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["MODULES", "module_path"]

MODULES = ("coop_return", "coop_pass_at_k")


def module_path(name: str) -> str:
    """Local directory of the ``evaluate`` module ``name`` (pass it to ``evaluate.load``)."""
    if name not in MODULES:
        raise ValueError(f"unknown metric module {name!r}; available: {', '.join(MODULES)}")
    return str(Path(__file__).resolve().parent / name)
