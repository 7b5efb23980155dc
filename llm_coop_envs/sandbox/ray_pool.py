"""Run sandbox jobs on a pool of Ray actors, each holding a local :class:`~llm_coop_envs.sandbox.Sandbox`.

:class:`RaySandbox` has the public surface of :class:`~llm_coop_envs.sandbox.Sandbox` (``run``, ``run_batch``,
``backend``, ``limits``, ``workers``, ``protects_host_files``, ``close``, a context manager, an LRU cache of
reports), so the coding env takes either (``sandbox="ray"`` uses :func:`shared_ray_sandbox`). Ray is imported
only when a RaySandbox is created (``pip install "llm-coop-envs[ray]"``).

>>> from llm_coop_envs.sandbox import RaySandbox, TestJob
>>> with RaySandbox(actors=2) as box:  # doctest: +SKIP
...     report = box.run(TestJob("def f():\\n    return 1\\n", ("assert f() == 1",), call_names=("f",)))
>>> report.passed, report.backend  # doctest: +SKIP
(1, 'ray+bwrap')

Where the code runs: every actor is one Ray worker process that holds a local Sandbox (its own fork-server
workers and judge workers, bubblewrap by default), so model code runs inside bubblewrap on the actor's node
with exactly the isolation, limits and time bounds described in :mod:`llm_coop_envs.sandbox.api`; the actor
process itself never executes model code. Reports come back with ``backend`` prefixed ``"ray+"``.

Ray: ``address=None`` uses the Ray this process is already connected to, else calls ``ray.init()``, which
connects to ``$RAY_ADDRESS`` when set and otherwise starts a local Ray; ``"auto"`` or ``"ray://host:10001"``
connect to a running cluster. :meth:`RaySandbox.close` shuts Ray down only when this module called
``ray.init`` (and no other RaySandbox still uses it); a Ray you started stays up. Actors are spread over the
nodes (``scheduling_strategy="SPREAD"``) and claim Ray's default actor resources (placed only where a CPU
exists, none held while running); pass ``actor_options={"num_cpus": 1}`` (or ``runtime_env``, ...) to
change that. Every node needs this package (and bubblewrap) installed.

Failures: an actor that dies (``RayActorError``, a lost result) or does not answer within
``4 * (budget_s + 15) + 60`` s is killed and replaced, and the job is run once more; a second failure raises
:class:`~llm_coop_envs.sandbox.SandboxError` naming the job. Reports of a rerun job are not cached.

Risk specific to Ray: whoever can reach a node's Ray ports (or its Unix sockets under ``/tmp/ray``) and
passes Ray's token check, if token authentication is on at all (``RAY_AUTH_MODE=token``: Ray 2.52 added it,
off by default; Ray 2.60, the version tested, turns it on for a local ``ray.init``), can run anything on the
cluster. In bubblewrap, model code has no network but loopback in its own namespace, a private /tmp and no
/root or home, so it reaches neither the ports, the sockets nor the token file (a test checks this). The
weak ``"subprocess"`` backend has none of that, which is why the default here is ``backend="bwrap"`` and
why an actor on the subprocess backend warns.
"""

from __future__ import annotations

import atexit
import dataclasses
import queue
import socket
import threading
import warnings
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from llm_coop_envs.sandbox.api import CachingRunner, ReportCache, Sandbox, job_key
from llm_coop_envs.sandbox.jobs import Backend, JobReport, Limits, SandboxError, TestJob

__all__ = ["INSTALL_HINT", "RaySandbox", "shared_ray_sandbox"]

INSTALL_HINT = 'pip install "llm-coop-envs[ray]"'
_DEFAULT_LIMITS = Limits()
_MAX_DEFAULT_ACTORS = 8


def _import_ray() -> Any:
    """The ``ray`` module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as error:
        raise ImportError(f"RaySandbox needs Ray; install it with: {INSTALL_HINT} (or: pip install ray)") from error
    return ray


def _host_timeout_s(job: TestJob) -> float:
    """How long the driver waits for one job before it treats the actor as hung (a safety net only: the
    actor's Sandbox bounds a job by about ``2 * (budget_s + 15) + 10`` s, plus one queued job ahead of it)."""
    return 4 * (job.budget_s + 15) + 60


def _job_name(key: str, job: TestJob) -> str:
    """A short human-readable name of a job for error messages."""
    first = next((line for line in job.program.splitlines() if line.strip()), "")
    return f"job {key[:12]} (program starting {first[:60]!r}, {len(job.tests)} tests)"


class _SandboxActor:
    """The body of one Ray actor: a local Sandbox that runs the jobs a RaySandbox sends it.

    Its reports are never cached here (the driver caches). A Sandbox that cannot start (no bubblewrap on
    this node, say) is reported by :meth:`describe` instead of failing the actor's constructor, so the driver
    can raise a clear SandboxError.
    """

    def __init__(self, backend: Backend, limits: Limits, workers: int, allow_unsafe_root: bool) -> None:
        self._box: Sandbox | None = None
        self._error: str | None = None
        try:
            self._box = Sandbox(backend, limits, workers, cache_size=0, allow_unsafe_root=allow_unsafe_root)
        except (SandboxError, ValueError) as error:
            self._error = f"{type(error).__name__} on Ray node {socket.gethostname()}: {error}"

    def describe(self) -> tuple[str | None, bool, str | None]:
        """(backend really used, protects_host_files, error): the backend is None when the Sandbox failed."""
        if self._box is None:
            return None, False, self._error
        return self._box.backend, self._box.protects_host_files, None

    def run(self, job: TestJob) -> tuple[JobReport, bool]:
        """(report, cacheable), exactly as the local pool returns them (see ``Sandbox``'s cache rule)."""
        if self._box is None:
            raise SandboxError(self._error or "the sandbox did not start")
        return self._box._pool.run(job)

    def close(self) -> None:
        if self._box is not None:
            self._box.close()


class _RaySession:
    """Who called ``ray.init``: this module shuts down only a Ray it started, after its last user closed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owned = False
        self._users = 0

    def acquire(self, ray: Any, address: str | None) -> bool:
        """Connect (or reuse the current connection); True when the caller must later :meth:`release`."""
        with self._lock:
            if ray.is_initialized() and not self._owned:
                return False  # the user's Ray: never shut it down
            if not ray.is_initialized():
                ray.init(address=address)
                self._owned = True
            self._users += 1
            return True

    def release(self, ray: Any) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._owned:
                self._owned = False
                if ray.is_initialized():
                    ray.shutdown()


_SESSION = _RaySession()


@dataclasses.dataclass(frozen=True)
class _ActorSpec:
    """What every actor of one RaySandbox is created with."""

    backend: Backend
    limits: Limits
    workers: int
    allow_unsafe_root: bool
    options: Mapping[str, Any]
    start_timeout_s: float


class _Fleet:
    """The actors of one RaySandbox, their job slots and runner threads; closed by one finalizer."""

    def __init__(self, ray: Any, spec: _ActorSpec, count: int, owns_session: bool) -> None:
        self.ray, self.spec, self.owns_session = ray, spec, owns_session
        self.actor_class = ray.remote(_SandboxActor)
        self.lock = threading.Lock()  # guards the lists below and `closed`; held only briefly
        self.replacing = threading.Lock()  # one replacement at a time (it may wait for Ray to place an actor)
        self.closed = False
        self.handles: list[Any] = []
        self.backends: list[str] = []
        self.protects: list[bool] = []
        self._start(count)
        per_actor = 2 * spec.workers  # like the local pool: a job's verdicts overlap the next job's program
        self.slots: queue.Queue[int] = queue.Queue()
        for _ in range(per_actor):
            for index in range(count):
                self.slots.put(index)
        self.runners = ThreadPoolExecutor(max_workers=count * per_actor, thread_name_prefix="ray-sandbox")

    def _create(self, count: int) -> list[Any]:
        options = {"max_concurrency": 2 * self.spec.workers, "max_restarts": 0, "scheduling_strategy": "SPREAD"}
        options.update(self.spec.options)
        cls = self.actor_class.options(**options)
        args = (self.spec.backend, self.spec.limits, self.spec.workers, self.spec.allow_unsafe_root)
        return [cls.remote(*args) for _ in range(count)]

    def _describe(self, handles: list[Any]) -> list[tuple[str, bool]]:
        """Wait until the actors run; their (backend, protects_host_files). Kills them all on failure."""
        ray, timeout = self.ray, self.spec.start_timeout_s
        try:
            infos = ray.get([handle.describe.remote() for handle in handles], timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            self._kill(handles)
            raise SandboxError(
                f"Ray did not start {len(handles)} sandbox actor(s) within {timeout:g} s (cluster resources: "
                f"{ray.cluster_resources()}); ask for fewer actors, other actor_options or more nodes"
            ) from None
        except ray.exceptions.RayActorError as error:
            self._kill(handles)
            raise SandboxError(f"a sandbox actor died while starting: {error}") from error
        errors = [error for _, _, error in infos if error is not None]
        if errors:
            self._kill(handles)
            raise SandboxError(f"a sandbox actor could not start its sandbox: {errors[0]}")
        return [(backend, protects) for backend, protects, _ in infos]

    def _start(self, count: int) -> None:
        handles = self._create(count)
        infos = self._describe(handles)
        self.handles = handles
        self.backends = [backend for backend, _ in infos]
        self.protects = [protects for _, protects in infos]
        _warn_if_weak(self.backends)

    def _kill(self, handles: list[Any]) -> None:
        for handle in handles:
            try:
                self.ray.kill(handle, no_restart=True)
            except Exception:  # already gone, or Ray itself is gone
                pass

    @property
    def backend(self) -> str:
        with self.lock:
            return "ray+" + "/".join(sorted(set(self.backends)))

    def replace(self, index: int, dead: Any) -> None:
        """Kill the actor at ``index`` (when it is still ``dead``) and start a new one there."""
        with self.replacing:
            with self.lock:
                if self.closed:
                    raise SandboxError("the sandbox is closed")
                if self.handles[index] is not dead:
                    return  # another thread replaced it already
            self._kill([dead])
            fresh = self._create(1)
            (backend, protects), *_ = self._describe(fresh)
            with self.lock:
                if self.closed:
                    self._kill(fresh)
                    raise SandboxError("the sandbox is closed")
                self.handles[index], self.backends[index], self.protects[index] = fresh[0], backend, protects
        _warn_if_weak([backend])

    def _attempt(self, key: str, index: int, job: TestJob) -> tuple[JobReport, bool] | str:
        """One try on the actor of slot ``index``: (report, cacheable), or why that actor failed (it has been
        replaced by then)."""
        ray = self.ray
        with self.lock:
            if self.closed:
                raise SandboxError("the sandbox is closed")
            handle = self.handles[index]
        lost = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, ray.exceptions.GetTimeoutError)
        try:
            report, cacheable = ray.get(handle.run.remote(job), timeout=_host_timeout_s(job))
        except lost as error:
            try:
                self.replace(index, handle)
            except SandboxError as why:
                raise SandboxError(f"{_job_name(key, job)}: its actor failed and was not replaced: {why}") from why
            return f"{type(error).__name__}: {str(error)[:300]}"
        return dataclasses.replace(report, backend=f"ray+{report.backend}"), cacheable

    def run(self, key: str, job: TestJob) -> tuple[JobReport, bool]:
        """(report, cacheable) of one job; an actor failure replaces the actor and reruns the job once."""
        failures: list[str] = []
        for _ in range(2):
            index = self.slots.get()
            try:
                outcome = self._attempt(key, index, job)
            finally:
                self.slots.put(index)
            if not isinstance(outcome, str):
                report, cacheable = outcome
                return report, cacheable and not failures  # a rerun's report is not cached
            failures.append(outcome)
        raise SandboxError(f"{_job_name(key, job)} failed on two sandbox actors; last error: {failures[-1]}")

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            handles = list(self.handles)
        self.runners.shutdown(wait=False, cancel_futures=True)
        if self.ray.is_initialized():
            try:  # let each Sandbox stop its workers, then make sure the actors are gone
                self.ray.get([handle.close.remote() for handle in handles], timeout=10)
            except Exception:
                pass
            self._kill(handles)
        if self.owns_session:
            _SESSION.release(self.ray)


def _warn_if_weak(backends: Sequence[str]) -> None:
    if "subprocess" in backends:
        warnings.warn(
            "RaySandbox: some actors run model code with the weak 'subprocess' backend, which has no network "
            "isolation; on a Ray node that code can reach Ray's ports and sockets and may run anything on the "
            "cluster. Use backend='bwrap' (install bubblewrap on every node) for untrusted code.",
            RuntimeWarning,
            stacklevel=5,
        )


def _default_actors(ray: Any, workers_per_actor: int) -> int:
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(cpus // workers_per_actor, _MAX_DEFAULT_ACTORS))


class RaySandbox(CachingRunner):
    """A pool of Ray actors, each holding one local ``Sandbox``, with an LRU cache of reports.

    ``address``: None (the current Ray connection, else ``ray.init()``: ``$RAY_ADDRESS`` or a new local Ray),
    ``"auto"`` or ``"ray://host:port"`` (a running cluster); ignored when this process is already connected.
    ``actors`` defaults to the cluster's CPUs divided by ``workers_per_actor`` (at least 1, at most 8); each
    actor runs ``Sandbox(backend, limits, workers=workers_per_actor)`` and takes up to twice that many jobs
    at once, like the local pool. ``backend`` defaults to "bwrap" (see the module docstring for why);
    "auto" and "subprocess" are passed to the actors, as is ``allow_unsafe_root``. ``actor_options`` are extra
    Ray actor options (``num_cpus``, ``resources``, ``runtime_env``, ...); ``start_timeout_s`` bounds the wait
    for actors to be placed and started. ``cache_size=0`` disables the cache. Use as a context manager or
    call :meth:`close`.
    """

    def __init__(
        self,
        address: str | None = None,
        actors: int | None = None,
        backend: Backend = "bwrap",
        limits: Limits = _DEFAULT_LIMITS,
        workers_per_actor: int = 1,
        cache_size: int = 4096,
        *,
        actor_options: Mapping[str, Any] | None = None,
        start_timeout_s: float = 300.0,
        allow_unsafe_root: bool = False,
    ) -> None:
        if not isinstance(limits, Limits):
            raise TypeError(f"limits must be a Limits, got {type(limits).__name__}")
        if backend not in ("auto", "bwrap", "subprocess"):
            raise ValueError(f"backend must be 'auto', 'bwrap' or 'subprocess', got {backend!r}")
        if actors is not None and actors < 1:
            raise ValueError(f"actors must be >= 1, got {actors!r}")
        if workers_per_actor < 1 or cache_size < 0 or not start_timeout_s > 0:
            raise ValueError("workers_per_actor must be >= 1, cache_size >= 0 and start_timeout_s > 0")
        ray = _import_ray()
        spec = _ActorSpec(
            backend, limits, workers_per_actor, allow_unsafe_root, dict(actor_options or {}), start_timeout_s
        )
        owns_session = _SESSION.acquire(ray, address)
        try:
            count = actors if actors is not None else _default_actors(ray, workers_per_actor)
            self._fleet = _Fleet(ray, spec, count, owns_session)
        except BaseException:
            if owns_session:
                _SESSION.release(ray)
            raise
        self._limits = limits
        self._count = count
        self._workers_per_actor = workers_per_actor
        self._cache = ReportCache(cache_size)
        self._finalizer = weakref.finalize(self, self._fleet.close)

    @property
    def backend(self) -> str:
        """What the actors really use, e.g. "ray+bwrap" ("ray+bwrap/subprocess" if nodes differ)."""
        return self._fleet.backend

    @property
    def protects_host_files(self) -> bool:
        """True when every actor's Sandbox protects its node's files (see ``Sandbox.protects_host_files``)."""
        with self._fleet.lock:
            return all(self._fleet.protects)

    @property
    def limits(self) -> Limits:
        return self._limits

    @property
    def actors(self) -> int:
        """The number of Ray actors."""
        return self._count

    @property
    def workers(self) -> int:
        """Sandbox workers over all actors: ``actors * workers_per_actor``."""
        return self._count * self._workers_per_actor

    @property
    def closed(self) -> bool:
        return self._fleet.closed

    def _key(self, job: TestJob) -> str:
        return job_key(["ray", self.backend], self._limits, job)

    def _execute(self, key: str, job: TestJob) -> tuple[JobReport, bool]:
        return self._fleet.run(key, job)

    @property
    def _closed(self) -> bool:
        return self._fleet.closed

    @property
    def _runners(self) -> ThreadPoolExecutor:
        return self._fleet.runners

    def close(self) -> None:
        """Stop every actor (and Ray, when this module started it); idempotent."""
        self._finalizer()


_shared: dict[str, RaySandbox] = {}
_shared_lock = threading.Lock()


def shared_ray_sandbox(backend: Backend = "bwrap") -> RaySandbox:
    """A lazily created process-wide RaySandbox per backend (default address and actors), closed at exit."""
    with _shared_lock:
        box = _shared.get(backend)
        if box is None or box.closed:
            box = _shared[backend] = RaySandbox(backend=backend)
        return box


@atexit.register
def _close_shared() -> None:
    for box in list(_shared.values()):
        box.close()
