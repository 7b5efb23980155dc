"""Run model-written Python programs against test statements, isolated (design and limits: :mod:`llm_coop_envs.sandbox.api`).

``RaySandbox`` and ``shared_ray_sandbox`` (:mod:`llm_coop_envs.sandbox.ray_pool`, the same jobs on Ray actors)
are loaded on first access, so importing this package never imports Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llm_coop_envs.sandbox.api import Sandbox, bwrap_available, shared_sandbox
from llm_coop_envs.sandbox.jobs import Backend, JobReport, Limits, SandboxError, TestJob, TestOutcome, TestStatus

if TYPE_CHECKING:
    from llm_coop_envs.sandbox.ray_pool import RaySandbox, shared_ray_sandbox

__all__ = [
    "Backend",
    "JobReport",
    "Limits",
    "RaySandbox",
    "Sandbox",
    "SandboxError",
    "TestJob",
    "TestOutcome",
    "TestStatus",
    "bwrap_available",
    "shared_ray_sandbox",
    "shared_sandbox",
]
_LAZY = ("RaySandbox", "shared_ray_sandbox")


def __getattr__(name: str) -> Any:
    """The Ray names, imported from :mod:`llm_coop_envs.sandbox.ray_pool` on first use."""
    if name in _LAZY:
        from llm_coop_envs.sandbox import ray_pool

        return getattr(ray_pool, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
