"""Run model-written Python programs against test statements, isolated: the public API.

This package is the only part of the project that ever executes model output. The coding environment calls
it with a :class:`TestJob` (the combined program and its ``assert`` statements) and gets a :class:`JobReport`.

>>> from llm_coop_envs.sandbox import Sandbox, TestJob
>>> with Sandbox() as box:
...     report = box.run(TestJob("def add(a, b):\\n    return a + b\\n", ("assert add(1, 2) == 3",), call_names=("add",)))
>>> report.passed, report.total
(1, 1)

Modules: ``api`` (this: :class:`Sandbox`, the cache, backend choice), ``jobs`` (the data types), ``pool``
(host side: workers and the pool), ``server`` (the fork server run inside the sandbox with ``python -I``)
and ``judge`` (the two-process judge). Each documents its own part.

How it works
------------
Each worker is one long-lived, warm Python fork server inside a bubblewrap sandbox (or, as a weaker fallback,
a plain subprocess). The server never reads a program or a test: before each job it forks a *test process*,
which locks itself down and then reads the job itself, so no process that runs model code ever held an
earlier job. It loads the program and then runs the tests one at a time on command from the server.
With ``call_names`` (the coding env always sets them) only the calls of the named functions run there, and
each assert is decided in a separate judge worker that never runs model code, from the returned values as
plain data (:mod:`llm_coop_envs.sandbox.judge`; one long-lived judge process per judge worker takes all the
verdicts of a job in one command). A result counts only from a well-formed, in-order frame carrying the
per-test nonce; exits, crashes, kills, printing or malformed frames never pass. A worker that dies, stops
answering, breaks the protocol or cannot clear its private tmp is retired and replaced, and reports it
produced are not cached (a job whose first process could not even start runs once more on a fresh worker).

Time bound of one job: each phase (program load, one test) has ``test_timeout_s``, and the job has
``TestJob.budget_s`` (default ``test_timeout_s * (max_timeouts + 1)``: 40 s in the coding env); tests that
time out, die or break the protocol all count towards ``max_timeouts``. The host kills a worker that is silent
for ``2 * test_timeout_s + 15`` s or runs past ``budget_s + 15`` s. So the program's phase of a job ends
within ``budget_s + 15`` s and the verdicts within as much again (in practice milliseconds), plus worker
start-up (about 0.1 s) and, at most once, a first attempt that failed before the program ran (under 10 s).
``CodingEnv.step`` runs a joint action's two jobs (the combined program, aux alone) concurrently when the
pool has two workers, so one step is bounded by about ``2 * (budget_s + 15) + 10`` s, 120 s with the
defaults; the hostile program of issue 12 that took 133 s now takes about the budget (see the bench notes).

Isolation, bubblewrap backend (``backend="bwrap"``)
  * new pid (the server is pid 1: nothing inside can signal it), net, ipc, uts (and cgroup where possible)
    namespaces; ``--die-with-parent``, ``--new-session``; only loopback exists;
  * read-only binds of /usr, /lib*, /bin, /sbin, the interpreter's installation prefix and the server file
    only; no /proc; a private /dev; a size- and (as root) inode-limited tmpfs as cwd and /tmp and a 1 MiB
    /dev/shm, cleared (iteratively, with directory descriptors) before every test process; /home, /root,
    /work and the project checkout are absent; ``--clearenv`` plus a minimal environment (no secrets);
  * model code runs with no capabilities under a seccomp filter (x86_64) that denies the kernel keyring
    (keyctl, add_key, request_key), SysV IPC and POSIX message queues, every new namespace (unshare, setns,
    clone with CLONE_NEW*, clone3) and mount calls. Run as root, bwrap runs privileged: the server keeps
    only CAP_SETUID/CAP_SETGID/CAP_KILL (CAP_SYS_ADMIN only until it has mounted the inode-limited tmpfs,
    before any job) and test processes drop to a host uid of their own per worker
    (so RLIMIT_NPROC counts only that worker's processes); bwrap refuses ``--disable-userns`` without
    ``--unshare-user``, which is why the seccomp filter denies user namespaces. Run unprivileged, a user
    namespace maps uid 65534 to the caller and ``--disable-userns`` is passed as well;
  * rlimits in every test process: CPU, AS (per process), NOFILE, FSIZE, NPROC, CORE=0. The memory of a
    job's process tree is bounded by ``Limits.max_processes * Limits.memory_bytes`` (8 GiB by default);
    cgroups are not used.

Isolation, subprocess backend (``backend="subprocess"``; weak, used only on request or, with a loud
RuntimeWarning, when bubblewrap is unusable): scrubbed environment, private temp cwd, new session, rlimits,
the same seccomp filter; test processes drop to uid 65534 only when running as root and the interpreter is
readable by that uid, and the server runs under a reaper that kills every descendant (``setsid`` ones too)
when the server ends. When it would run model code as root, it refuses unless ``allow_unsafe_root=True``.
It has no network or filesystem namespace: code can reach the network and write wherever its uid may, and
under your own uid it can read your files. Do not use it for untrusted output on a machine you care about.

Remaining risks (honest list)
  * Tests the judge cannot split, and every test of a job without ``call_names``, run inside the program's
    process and can be forged by a program written against this harness (it can read the nonce from its
    command pipe and write a result frame; a test shows it). The coding env reports how many such tests a
    score had in ``breakdown["tests_unsplit"]`` (none of the 1,128 asserts extracted from HumanEval).
  * The program's process holds its own job: the program, the call arguments (and needed setup) of every
    split test and the full text of the unsplit ones. Expected values of split tests are never in any
    process that runs model code.
  * Memory is bounded per process times processes, not per tree (no cgroup is used). The inode limit of the
    private tmp (``Limits.tmp_inodes``) exists only when bwrap runs as root (bubblewrap 0.8 cannot set tmpfs
    ``nr_inodes``, so the server mounts the tmpfs itself and then drops CAP_SYS_ADMIN); unprivileged, inodes
    are bounded only by the job's time and the cleanup deadline (a tmp that cannot be cleared in 4 s
    retires the worker).
  * The seccomp filter exists for x86_64 only; elsewhere the keyring, SysV IPC and namespaces are reachable.
  * Subprocess backend: a child-subreaper process above the server kills every descendant (``setsid`` ones
    too) when the server ends; but model code running under the caller's own uid can kill that reaper,
    and every other process of the uid, itself.
  * Plain-data results only: a correct function returning a custom class or, say, a numpy array fails.
  * In bwrap the model sees the interpreter's own site-packages (read-only), not a virtualenv's.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import hashlib
import json
import os
import threading
import warnings
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from llm_coop_envs.sandbox import judge
from llm_coop_envs.sandbox.jobs import Backend, JobReport, Limits, SandboxError, TestJob
from llm_coop_envs.sandbox.pool import Pool, probe_bwrap, subprocess_drops_privileges

__all__ = ["Sandbox", "bwrap_available", "shared_sandbox"]


def bwrap_available() -> bool:
    """True when bubblewrap is installed and can actually start a sandbox on this machine."""
    return probe_bwrap() is not None


_warned_fallback: list[bool] = []
_DEFAULT_LIMITS = Limits()


def _resolve_backend(backend: Backend, allow_unsafe_root: bool) -> str:
    if backend not in ("auto", "bwrap", "subprocess"):
        raise ValueError(f"backend must be 'auto', 'bwrap' or 'subprocess', got {backend!r}")
    if backend != "subprocess" and probe_bwrap() is not None:
        return "bwrap"
    if backend == "bwrap":
        raise SandboxError(
            "backend='bwrap' requested but bubblewrap is missing or cannot create namespaces "
            "here; install it (apt-get install bubblewrap) or allow unprivileged user namespaces"
        )
    if os.geteuid() == 0 and not subprocess_drops_privileges() and not allow_unsafe_root:
        raise SandboxError(
            "the subprocess backend would run model code as root here (the interpreter is not readable by "
            "uid 65534); install bubblewrap, or pass allow_unsafe_root=True to accept that"
        )
    if backend == "auto" and not _warned_fallback:
        _warned_fallback.append(True)
        warnings.warn(
            "llm_coop_envs.sandbox: bubblewrap (bwrap) is missing or unusable, so model-written code "
            "runs with the weak 'subprocess' backend: NO network isolation, NO filesystem isolation "
            "(it can write wherever its uid may) and, unless running as root, it runs as your own uid. "
            "Install bubblewrap (e.g. `apt-get install bubblewrap`) and make sure user namespaces are "
            "allowed to get the isolated 'bwrap' backend.",
            RuntimeWarning,
            stacklevel=3,
        )
    return "subprocess"


class _Pools:
    """The program pool and the judge pool, closed together by one finalizer."""

    def __init__(self, backend: str, limits: Limits, size: int) -> None:
        self.programs = Pool(backend, limits, size)
        self.judges = Pool(backend, limits, size, judge=True)

    @property
    def closed(self) -> bool:
        return self.programs.closed

    def close(self) -> None:
        self.programs.close()
        self.judges.close()

    def run(self, job: TestJob) -> tuple[JobReport, bool]:
        """(report, cacheable): the program's phase, then (when some tests were split) the verdicts."""
        wire, splits = judge.plan(job)
        raw, healthy = self.programs.run(wire)
        verdict_job, where, decided = judge.judge_job(job, splits, raw)
        verdicts = None
        if verdict_job is not None:
            judged, judge_healthy = self.judges.run(verdict_job)
            verdicts, healthy = judged.report, healthy and judge_healthy
        return judge.merge(raw, splits, verdicts, where, decided), healthy


_Runner = TypeVar("_Runner", bound="CachingRunner")


class ReportCache:
    """A thread-safe LRU cache of reports keyed by :func:`job_key` (size 0: off); hits come back with
    ``cached=True``."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"cache_size must be >= 0, got {size!r}")
        self._size = size
        self._items: collections.OrderedDict[str, JobReport] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> JobReport | None:
        with self._lock:
            report = self._items.get(key)
            if report is not None:
                self._items.move_to_end(key)
        return None if report is None else dataclasses.replace(report, cached=True)

    def put(self, key: str, report: JobReport) -> None:
        if self._size == 0:
            return
        with self._lock:
            self._items[key] = report
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


def job_key(prefix: Sequence[str], limits: Limits, job: TestJob) -> str:
    """The cache key of a job: everything that can change its report, after ``prefix`` (the backend)."""
    fields = [job.program, job.tests, job.test_timeout_s, job.max_timeouts, job.call_names, job.judge_prelude]
    blob = json.dumps([*prefix, *fields, job.budget_s, dataclasses.asdict(limits)])
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


class CachingRunner:
    """What :class:`Sandbox` and :class:`~llm_coop_envs.sandbox.ray_pool.RaySandbox` share: the report cache,
    ``run``, ``run_batch`` (concurrent, input order, duplicates run once), ``close`` and the context manager.
    A subclass sets ``_cache`` and ``_finalizer`` and provides :meth:`_key`, :meth:`_execute`,
    :attr:`_closed` and :attr:`_runners`."""

    _cache: ReportCache
    _finalizer: weakref.finalize

    def _key(self, job: TestJob) -> str:
        raise NotImplementedError

    def _execute(self, key: str, job: TestJob) -> tuple[JobReport, bool]:
        """(report, cacheable) of one job, run now."""
        raise NotImplementedError

    @property
    def _closed(self) -> bool:
        raise NotImplementedError

    @property
    def _runners(self) -> ThreadPoolExecutor:
        raise NotImplementedError

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxError("the sandbox is closed")

    def _run_uncached(self, key: str, job: TestJob) -> JobReport:
        report, cacheable = self._execute(key, job)
        if cacheable:
            self._cache.put(key, report)
        return report

    def run(self, job: TestJob) -> JobReport:
        """Run one job (or return its cached report)."""
        if not isinstance(job, TestJob):
            raise TypeError(f"run() takes a TestJob, got {type(job).__name__}")
        self._check_open()
        key = self._key(job)
        return self._cache.get(key) or self._run_uncached(key, job)

    def run_batch(self, jobs: Sequence[TestJob]) -> list[JobReport]:
        """Run jobs concurrently over the workers; results in input order. Duplicates run once."""
        for job in jobs:
            if not isinstance(job, TestJob):
                raise TypeError(f"run_batch() takes TestJobs, got {type(job).__name__}")
        self._check_open()
        keys = [self._key(job) for job in jobs]
        hits: dict[str, JobReport] = {}
        todo: dict[str, TestJob] = {}
        for key, job in zip(keys, jobs, strict=True):
            if key in hits or key in todo:
                continue
            hit = self._cache.get(key)
            if hit is not None:
                hits[key] = hit
            else:
                todo[key] = job
        futures = {key: self._runners.submit(self._run_uncached, key, job) for key, job in todo.items()}
        fresh = {key: future.result() for key, future in futures.items()}
        out: list[JobReport] = []
        first: dict[str, JobReport] = {}
        for key in keys:
            if key in first:  # a duplicate inside this batch
                out.append(dataclasses.replace(first[key], cached=True))
                continue
            first[key] = fresh.get(key) or hits[key]
            out.append(first[key])
        return out

    def close(self) -> None:
        """Stop every worker; idempotent."""
        self._finalizer()

    def __enter__(self: _Runner) -> _Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Sandbox(CachingRunner):
    """A pool of warm, isolated fork-server workers (and as many judge workers) with an LRU cache of reports.

    ``workers`` defaults to the number of CPUs (at most 8); workers start lazily on first use.
    ``cache_size=0`` disables the cache. Use as a context manager or call :meth:`close`.
    ``allow_unsafe_root`` lets the subprocess backend run model code as root (see the module docstring).
    """

    def __init__(
        self,
        backend: Backend = "auto",
        limits: Limits = _DEFAULT_LIMITS,
        workers: int | None = None,
        cache_size: int = 4096,
        *,
        allow_unsafe_root: bool = False,
    ) -> None:
        if not isinstance(limits, Limits):
            raise TypeError(f"limits must be a Limits, got {type(limits).__name__}")
        size = workers if workers is not None else max(1, min(os.cpu_count() or 1, 8))
        if size < 1:
            raise ValueError(f"workers must be >= 1, got {workers!r}")
        self._cache = ReportCache(cache_size)
        self._backend = _resolve_backend(backend, allow_unsafe_root)
        self._limits = limits
        self._pool = _Pools(self._backend, limits, size)
        self._size = size
        self._finalizer = weakref.finalize(self, self._pool.close)

    @property
    def backend(self) -> str:
        """The backend actually in use: "bwrap" or "subprocess"."""
        return self._backend

    @property
    def protects_host_files(self) -> bool:
        """True when model code cannot write or delete the caller's files: always with bwrap; with the
        subprocess backend only when it could drop to uid 65534 (it cannot protect world-writable places)."""
        return self._backend == "bwrap" or subprocess_drops_privileges()

    @property
    def limits(self) -> Limits:
        return self._limits

    @property
    def workers(self) -> int:
        return self._size

    def _key(self, job: TestJob) -> str:
        return job_key([self._backend], self._limits, job)

    def _execute(self, key: str, job: TestJob) -> tuple[JobReport, bool]:
        return self._pool.run(job)

    @property
    def _closed(self) -> bool:
        return self._pool.closed

    @property
    def _runners(self) -> ThreadPoolExecutor:
        return self._pool.programs.runners


_shared: dict[str, Sandbox] = {}
_shared_lock = threading.Lock()


def shared_sandbox(backend: Backend = "auto") -> Sandbox:
    """A lazily created process-wide Sandbox per backend, closed at interpreter exit."""
    with _shared_lock:
        box = _shared.get(backend)
        if box is None or box._pool.closed:
            box = _shared[backend] = Sandbox(backend)
        return box


@atexit.register
def _close_shared() -> None:
    for box in list(_shared.values()):
        box.close()
