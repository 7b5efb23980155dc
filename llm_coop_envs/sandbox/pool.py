"""Host side of the sandbox: launching fork-server workers, talking to them, and the pool that reuses them.

A worker is ``python -I -B server.py CONFIG`` (:mod:`llm_coop_envs.sandbox.server`, bound read-only into the
sandbox as a file) inside bubblewrap, or, as the weak fallback, a plain subprocess. This module never runs
model code and never interprets it: it sends a job (program + per-test payloads) and reads events back, with
a wall-clock bound on every wait, and decides whether the worker may be reused.

A worker is *retired* (killed and replaced; its report is never cached) when it stops answering, dies,
breaks the protocol, reports that a test process died before loading the program (``dirty``: e.g. the
private tmp could not be cleared), or overruns the job's budget.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import select
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Any, cast

from llm_coop_envs.sandbox.jobs import JobReport, Limits, SandboxError, TestOutcome, TestStatus

_NOBODY = 65534
_MAX_FRAME = 64 << 20
_SERVER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "server.py")
_SERVER_INSIDE = "/run/llm-coop-sandbox/server.py"
_UID_BASE = 0x5A000000  # privileged bwrap: each worker's test processes get their own uid from here
_uids = itertools.count()
CLEAN_SECONDS = 4.0  # a test process that cannot clear the private tmp in this time retires its worker
_PRELOAD = (
    "math", "re", "typing", "collections", "itertools", "functools", "string", "heapq", "bisect", "fractions",
    "decimal", "random", "statistics", "hashlib", "datetime", "copy", "operator",
)  # fmt: skip


@dataclass(frozen=True)
class WireJob:
    """What a worker receives: the program and one payload per test ({"a": assert} or {"c": calls})."""

    program: str
    tests: tuple[dict[str, Any], ...]
    timeout: float
    max_failures: int
    budget: float

    def payload(self, limits: Limits) -> dict[str, Any]:
        return {
            "program": self.program,
            "tests": list(self.tests),
            "timeout": self.timeout,
            "max_failures": self.max_failures,
            "budget": self.budget,
            "limits": asdict(limits),
        }


@dataclass(frozen=True)
class RawReport:
    """A worker's report: the JobReport (split tests have a placeholder outcome) plus their values."""

    report: JobReport
    values: tuple[str | None, ...]


def _interpreter() -> tuple[str, str]:
    """(real path of the Python executable, real installation prefix) to run inside the sandbox."""
    return os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix)


def minimal_env(tmp: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "TMPDIR": tmp,
    }


def _bind_interpreter() -> list[str]:
    exe, prefix = _interpreter()
    argv: list[str] = []
    for root in sorted({prefix, os.path.dirname(os.path.dirname(exe))}):
        if root.startswith("/usr/") or root == "/usr":
            continue
        parents = []
        parent = os.path.dirname(root)
        while parent not in ("/", ""):
            parents.append(parent)
            parent = os.path.dirname(parent)
        for parent in reversed(parents):
            argv += ["--perms", "0755", "--dir", parent]
        argv += ["--ro-bind", root, root]
    return argv


def bwrap_argv(limits: Limits, privileged: bool) -> list[str]:
    """The bubblewrap command line, up to (not including) the program to run inside."""
    argv = ["bwrap", "--unshare-pid", "--as-pid-1", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
    argv += ["--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv", "--hostname", "sandbox"]
    for key, value in minimal_env("/tmp").items():
        argv += ["--setenv", key, value]
    for path in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    argv += _bind_interpreter()
    argv += ["--ro-bind", _SERVER_FILE, _SERVER_INSIDE, "--dev", "/dev"]
    argv += ["--perms", "1777", "--size", str(1 << 20), "--tmpfs", "/dev/shm", "--remount-ro", "/dev"]
    argv += ["--perms", "1777", "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp", "--chdir", "/tmp"]
    argv += ["--cap-drop", "ALL"]
    if privileged:  # real root: the server keeps three caps, children drop to a real host uid of their own
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_KILL"]
        argv += ["--cap-add", "CAP_SYS_ADMIN"]  # only to mount the inode-limited tmpfs; dropped before any job
    else:  # bwrap accepts --disable-userns only with --unshare-user; privileged, seccomp denies user namespaces
        argv += ["--unshare-user", "--uid", str(_NOBODY), "--gid", str(_NOBODY), "--disable-userns"]
    return [*argv, "--", _interpreter()[0], "-I", "-B", _SERVER_INSIDE]


def readable_by_nobody(path: str) -> bool:
    """Whether uid 65534 can traverse to `path` and read it (checked with 'other' permission bits)."""
    parts = os.path.realpath(path).split("/")
    for i in range(2, len(parts) + 1):
        mode = os.stat("/".join(parts[:i]) or "/").st_mode
        if not mode & stat.S_IXOTH or not mode & stat.S_IROTH:
            return False
    return True


def subprocess_drops_privileges() -> bool:
    """Whether the subprocess backend runs model code as uid 65534 (only as root, interpreter readable)."""
    return os.geteuid() == 0 and readable_by_nobody(_interpreter()[1]) and readable_by_nobody(_SERVER_FILE)


_probe_lock = threading.Lock()
_bwrap_mode: list[str | None] = []  # cached probe: "privileged", "userns" or None


def probe_bwrap() -> str | None:
    with _probe_lock:
        if not _bwrap_mode:
            _bwrap_mode.append(_probe_bwrap_uncached())
        return _bwrap_mode[0]


def _probe_bwrap_uncached() -> str | None:
    if shutil.which("bwrap") is None:
        return None
    modes = ["privileged", "userns"] if os.geteuid() == 0 else ["userns"]
    for mode in modes:
        argv = bwrap_argv(Limits(), mode == "privileged")
        argv[-3:] = ["-I", "-c", "import os; print(os.getuid())"]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=30, env=minimal_env("/tmp"), check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return mode
    return None


def _worker_config(backend: str, limits: Limits, tmpdir: str | None, judge: bool) -> tuple[dict[str, Any], bool]:
    """(server config, privileged) for a new worker."""
    cfg: dict[str, Any] = {"preload": list(_PRELOAD), "parent": os.getpid(), "judge": judge, "seccomp": True}
    cfg["limits"] = asdict(limits)
    cfg["clean_seconds"] = CLEAN_SECONDS
    if backend == "bwrap":
        privileged = probe_bwrap() == "privileged"
        uid = _UID_BASE + ((os.getpid() & 0xFFFF) << 8) + next(_uids) % 256 if privileged else None
        cfg.update(child_uid=uid, kill_all=True, tmp="/tmp", scratch=["/tmp", "/dev/shm"], limit_nproc=True)
        if privileged:  # the server mounts them with inode limits, then drops CAP_SYS_ADMIN
            cfg["tmp_mounts"] = [["/tmp", limits.tmp_bytes, limits.tmp_inodes], ["/dev/shm", 1 << 20, 64]]
        return cfg, privileged
    assert tmpdir is not None
    drop = subprocess_drops_privileges()
    cfg.update(child_uid=_NOBODY if drop else None, kill_all=False, tmp=tmpdir, scratch=[tmpdir], limit_nproc=drop)
    return cfg, False


class Worker:
    """One fork server process and the pipes to it."""

    def __init__(self, backend: str, limits: Limits, judge: bool = False) -> None:
        self.tmpdir: str | None = None if backend == "bwrap" else tempfile.mkdtemp(prefix="llm-coop-sandbox-")
        cfg, privileged = _worker_config(backend, limits, self.tmpdir, judge)
        if backend == "bwrap":
            argv, env, cwd = bwrap_argv(limits, privileged), minimal_env("/tmp"), "/"
        else:
            assert self.tmpdir is not None
            if cfg["child_uid"] is not None:
                os.chown(self.tmpdir, _NOBODY, _NOBODY)
            argv = [_interpreter()[0], "-I", "-B", _SERVER_FILE, "--reaper"]  # the server runs under a reaper
            env, cwd = minimal_env(self.tmpdir), self.tmpdir
        self.child_uid = cfg["child_uid"]
        self.proc = subprocess.Popen(
            [*argv, json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
        self._buf = bytearray()
        ready = self.read_event(time.monotonic() + 60)
        if ready is None or ready.get("e") != "ready":
            self.kill()
            raise SandboxError(f"the {backend} sandbox worker failed to start (exit status {self.proc.poll()})")
        self.seccomp = bool(ready.get("seccomp"))

    def send(self, job: dict[str, Any]) -> bool:
        data = json.dumps(job).encode()
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(struct.pack(">I", len(data)) + data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return False
        return True

    def read_event(self, deadline: float) -> dict[str, Any] | None:
        """The next event from the server, or None when it died or missed `deadline`."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            if len(self._buf) >= 4:
                size = int.from_bytes(self._buf[:4], "big")
                if size > _MAX_FRAME:
                    return None
                if len(self._buf) >= 4 + size:
                    body = bytes(self._buf[4 : 4 + size])
                    del self._buf[: 4 + size]
                    try:
                        event = json.loads(body)
                    except ValueError:
                        return None
                    return event if isinstance(event, dict) else None
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buf += chunk

    def kill(self) -> None:
        """Kill the worker and everything in its session; idempotent. Subprocess backend: SIGTERM first, so
        the reaper kills every descendant (also ``setsid`` ones) before it exits."""
        if self.proc.poll() is None and self.tmpdir is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def shutdown(self) -> None:
        """Polite stop (EOF on stdin lets the server exit between jobs), then kill."""
        if self.proc.poll() is None and self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


class Retry(Exception):
    """The worker could not run the job through no fault of the job (died idle, dirty): retry elsewhere."""


def _outcome(event: dict[str, Any]) -> TestOutcome:
    status = event.get("status")
    if status == "value":
        return TestOutcome("not_run", None, "awaiting the judge", str(event.get("output", "")))
    return TestOutcome(
        cast(TestStatus, status), event.get("type"), str(event.get("msg", "")), str(event.get("output", ""))
    )


def run_on_worker(worker: Worker, job: WireJob, limits: Limits, backend: str) -> tuple[RawReport, bool]:
    """Run `job` on `worker`; returns (report, worker_still_healthy). Raises Retry (worker unusable)."""
    if not worker.send(job.payload(limits)):
        raise Retry("worker died before the job was sent")
    gap = 2 * job.timeout + 15.0  # longest legitimate silence: program load + one test + cleanup
    end = time.monotonic() + job.budget + 15.0
    program: dict[str, Any] | None = None
    outcomes: list[TestOutcome] = []
    values: list[str | None] = []
    while True:
        event = worker.read_event(min(time.monotonic() + gap, end))
        kind = event.get("e") if event is not None else None
        if kind == "program" and event is not None:
            program = event
        elif kind == "test" and event is not None and event.get("status") in _STATUSES:
            outcomes.append(_outcome(event))
            values.append(event.get("value") if event.get("status") == "value" else None)
        elif kind == "done" and program is not None:
            break
        elif kind == "resend":  # a fresh test process (after a test ended the last one) reads the job again
            if not worker.send(job.payload(limits)):
                return RawReport(died_report(program, outcomes, len(job.tests), backend), _pad(values, job)), False
        elif kind == "dirty" and program is None:  # before the program ran: not the job's doing
            raise Retry(f"a test process died before loading the program: {event}")
        else:
            return RawReport(died_report(program, outcomes, len(job.tests), backend), _pad(values, job)), False
    rest = len(job.tests) - len(outcomes)
    outcomes += [TestOutcome("not_run", None, "not run")] * rest
    values += [None] * rest
    report = JobReport(program["status"], program["error"], tuple(outcomes), backend, False, program["output"])
    return RawReport(report, tuple(values)), True


def _pad(values: list[str | None], job: WireJob) -> tuple[str | None, ...]:
    return tuple(values) + (None,) * (len(job.tests) - len(values))


_STATUSES = ("passed", "failed", "error", "timeout", "value")


def died_report(program: dict[str, Any] | None, outcomes: list[TestOutcome], total: int, backend: str) -> JobReport:
    """The worker died (e.g. the code killed its server) or stopped answering mid-job: score conservatively."""
    what = "the sandbox worker was killed or stopped answering"
    if program is None:
        not_run = (TestOutcome("not_run", None, "not run"),) * total
        return JobReport("error", f"Killed: {what} while the program ran", not_run, backend, False)
    done = list(outcomes)
    if len(done) < total:
        done.append(TestOutcome("error", "Killed", f"{what} during this test"))
    done += [TestOutcome("not_run", None, "not run")] * (total - len(done))
    return JobReport(program["status"], program["error"], tuple(done), backend, False, program["output"])


class Pool:
    """Workers plus the threads that use them; separate from Sandbox so a finalizer can close it."""

    def __init__(self, backend: str, limits: Limits, size: int, judge: bool = False) -> None:
        self.backend, self.limits, self.size, self.judge = backend, limits, size, judge
        self.slots: queue.Queue[Worker | None] = queue.Queue()
        for _ in range(size):
            self.slots.put(None)
        self.live: set[Worker] = set()
        self.lock = threading.Lock()
        self.closed = False
        # Workers are started from one long-lived thread: bwrap's --die-with-parent (PR_SET_PDEATHSIG) fires
        # when the *thread* that spawned it exits, so short-lived caller threads must never spawn them.
        self.spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-spawn")
        # twice as many runner threads as workers: while one job's thread waits for its verdicts (judge pool),
        # another job already uses the program worker it released
        self.runners = ThreadPoolExecutor(max_workers=2 * size, thread_name_prefix="sandbox-run")

    def _spawn(self) -> Worker:
        worker = self.spawner.submit(Worker, self.backend, self.limits, self.judge).result()
        with self.lock:
            if self.closed:
                worker.kill()
                raise SandboxError("the sandbox is closed")
            self.live.add(worker)
        return worker

    def _retire(self, worker: Worker) -> None:
        with self.lock:
            self.live.discard(worker)
        worker.kill()

    def run(self, job: WireJob) -> tuple[RawReport, bool]:
        """(report, cacheable): reports of a worker that died, hung or went dirty mid-job are not cached."""
        if self.closed:
            raise SandboxError("the sandbox is closed")
        worker = self.slots.get()
        try:
            for attempt in range(2):
                if worker is None or worker.proc.poll() is not None:
                    if worker is not None:
                        self._retire(worker)
                    worker = None
                    worker = self._spawn()
                try:
                    raw, healthy = run_on_worker(worker, job, self.limits, self.backend)
                except Retry as why:  # retire it; a fresh worker (fresh tmpfs) runs the job once more
                    self._retire(worker)
                    worker = None
                    if attempt:
                        report = died_report(None, [], len(job.tests), self.backend)
                        error = f"SandboxError: the sandbox failed before the program ran twice ({why})"
                        return RawReport(replace(report, program_error=error), (None,) * len(job.tests)), False
                    continue
                if not healthy:
                    self._retire(worker)
                    worker = None
                return raw, healthy
            raise SandboxError("unreachable")
        finally:
            self.slots.put(worker)

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            workers = list(self.live)
            self.live.clear()
        for worker in workers:
            worker.shutdown()
        self.runners.shutdown(wait=False, cancel_futures=True)
        self.spawner.shutdown(wait=False, cancel_futures=True)
