"""Run model-written Python programs against test statements, isolated (design and limits: :mod:`llm_coop_envs.sandbox.api`)."""

from llm_coop_envs.sandbox.api import Sandbox, bwrap_available, shared_sandbox
from llm_coop_envs.sandbox.jobs import Backend, JobReport, Limits, SandboxError, TestJob, TestOutcome, TestStatus

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
