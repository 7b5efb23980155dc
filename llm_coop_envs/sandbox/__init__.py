"""Run model-written Python programs against test statements, isolated (see :mod:`llm_coop_envs.sandbox.api`)."""

from llm_coop_envs.sandbox.api import (
    Backend,
    JobReport,
    Limits,
    Sandbox,
    SandboxError,
    TestJob,
    TestOutcome,
    TestStatus,
    bwrap_available,
    shared_sandbox,
)

__all__ = [
    "Backend",
    "JobReport",
    "Limits",
    "Sandbox",
    "SandboxError",
    "TestJob",
    "TestOutcome",
    "TestStatus",
    "bwrap_available",
    "shared_sandbox",
]
