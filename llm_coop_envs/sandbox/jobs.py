"""The sandbox's data types: what a job is, which limits apply, what comes back. No behaviour here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Backend", "JobReport", "Limits", "SandboxError", "TestJob", "TestOutcome", "TestStatus"]

Backend = Literal["auto", "bwrap", "subprocess"]
TestStatus = Literal["passed", "failed", "error", "timeout", "not_run"]
ProgramStatus = Literal["ok", "error", "timeout"]


class SandboxError(RuntimeError):
    """The sandbox itself could not be started or used (never raised for anything the program does)."""


@dataclass(frozen=True)
class Limits:
    """Resource limits applied to every test process.

    The memory of a job's whole process tree is bounded by ``max_processes * memory_bytes`` (RLIMIT_AS is per
    process; RLIMIT_NPROC caps the processes and threads of the job's own uid; cgroups are not used).
    """

    cpu_seconds: float = 10.0  # RLIMIT_CPU soft limit, moved to (CPU used so far + this) before each test
    memory_bytes: int = 1 << 30  # RLIMIT_AS, per process
    max_processes: int = 8  # RLIMIT_NPROC: processes + threads of the job (bwrap: each worker has its own uid)
    max_open_files: int = 64  # RLIMIT_NOFILE
    max_file_bytes: int = 1 << 20  # RLIMIT_FSIZE
    max_output_bytes: int = 64 << 10  # stdout+stderr kept per test; the rest is read and dropped
    tmp_bytes: int = 64 << 20  # size of the writable tmpfs (bwrap backend only)
    tmp_inodes: int = 4096  # files + directories in that tmpfs (bwrap run as root only; see api's docstring)

    def __post_init__(self) -> None:
        for name in ("cpu_seconds", "memory_bytes", "max_processes", "max_open_files", "max_file_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name} must be positive, got {getattr(self, name)!r}")
        if self.max_output_bytes < 0 or self.tmp_bytes < 1 << 20 or self.tmp_inodes < 16:
            raise ValueError("Limits.max_output_bytes must be >= 0, tmp_bytes >= 1 MiB and tmp_inodes >= 16")

    @property
    def job_memory_bound(self) -> int:
        """Upper bound on the memory of one job's process tree, in bytes."""
        return self.max_processes * self.memory_bytes


@dataclass(frozen=True)
class TestJob:
    """A program (definitions, executed first) and test statements run one by one after it.

    ``call_names`` switches on the two-process judge (:mod:`llm_coop_envs.sandbox.judge`): the calls of these
    functions run in the sandboxed program's process, and each assert is evaluated in a separate sandbox
    process that never ran model code, after ``judge_prelude`` (trusted code, e.g. the task's imports).
    Without ``call_names`` every assert runs inside the program's process (forgeable by the program).

    Time: each phase (program load, one test) has ``test_timeout_s``; the whole job has ``job_timeout_s``
    (default ``test_timeout_s * (max_timeouts + 1)``); after ``max_timeouts`` tests that timed out, died or
    broke the protocol, the remaining tests are "not_run".
    """

    __test__ = False  # not a pytest test class

    program: str
    tests: tuple[str, ...]
    test_timeout_s: float = 10.0
    max_timeouts: int = 3
    call_names: tuple[str, ...] = ()
    judge_prelude: str = ""
    job_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.program, str) or not isinstance(self.judge_prelude, str):
            raise TypeError("TestJob.program and TestJob.judge_prelude must be str")
        for name in ("tests", "call_names"):
            values = tuple(getattr(self, name))
            if not all(isinstance(t, str) for t in values):
                raise TypeError(f"TestJob.{name} must be a sequence of str")
            object.__setattr__(self, name, values)
        if not self.test_timeout_s > 0:
            raise ValueError(f"TestJob.test_timeout_s must be positive, got {self.test_timeout_s!r}")
        if self.max_timeouts < 1:
            raise ValueError(f"TestJob.max_timeouts must be >= 1, got {self.max_timeouts!r}")
        if self.job_timeout_s is not None and not self.job_timeout_s > 0:
            raise ValueError(f"TestJob.job_timeout_s must be positive, got {self.job_timeout_s!r}")

    @property
    def budget_s(self) -> float:
        """The wall-clock budget of the whole job (one phase of it: the judge has the same again)."""
        if self.job_timeout_s is not None:
            return self.job_timeout_s
        return self.test_timeout_s * (self.max_timeouts + 1)


@dataclass(frozen=True)
class TestOutcome:
    """What the harness recorded for one test statement."""

    __test__ = False

    status: TestStatus
    error_type: str | None  # "AssertionError", "ZeroDivisionError", "Timeout", "MemoryError", "Killed", ...
    message: str  # short, at most ~300 characters
    output: str = ""  # captured stdout+stderr of the test statement (bounded by Limits.max_output_bytes)


@dataclass(frozen=True)
class JobReport:
    """The result of one :class:`TestJob`."""

    program_status: ProgramStatus
    program_error: str | None  # e.g. "NameError: name 'x' is not defined (line 3)"
    outcomes: tuple[TestOutcome, ...]  # one per test, same order
    backend: str  # "bwrap" or "subprocess"
    cached: bool
    program_output: str = ""  # stdout+stderr printed while the program itself ran (first test process)
    tests_unsplit: int = 0  # tests the judge could not split, checked inside the program's process

    @property
    def passed(self) -> int:
        return sum(o.status == "passed" for o in self.outcomes)

    @property
    def total(self) -> int:
        return len(self.outcomes)

    @property
    def timeouts(self) -> int:
        return sum(o.status == "timeout" for o in self.outcomes)
