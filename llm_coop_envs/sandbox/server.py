"""The fork server that runs INSIDE the sandbox (``python -I -B server.py CONFIG``); standard library only.

Trusted code. Process tree of one worker (bubblewrap backend; the server is pid 1 of its pid namespace)::

    server (never reads a program or a test)  --fork before each job-->  test process (reads the job itself)

* The **server** starts (as root under privileged bwrap: first mounts inode-limited tmpfs over /tmp and
  /dev/shm, then drops CAP_SYS_ADMIN), preloads common modules and reports "ready". Before each job it
  forks a *test process*, which locks itself down and then reads the job from stdin itself, so the server
  never holds a program or a test, and every test process is forked from a template that never held any
  job. The test process tells the server only what it needs to supervise ("H": the kind of each test,
  time limits). The server then drives the tests by index, with a fresh nonce each, enforces the
  wall-clock limits and the job's budget, and after each test process kills everything left in the
  sandbox (``kill(-1)`` spares only pid 1, itself; subprocess backend: a child-subreaper plus a /proc
  scan) and reaps it. When a test ends its process, a new one is forked and the host sends the job again
  ("resend"). Tests that time out, die or break the protocol count against the job's ``max_failures``.
  Being pid 1, the server cannot be signalled from inside the sandbox.
* A **test process** drops to the sandbox uid, clears the private tmp with directory file descriptors
  (any depth, no path length limit; a tmp that cannot be cleared in time makes it exit ``DIRTY`` before any
  model code ran, and the host retires the worker), applies rlimits and a seccomp filter (no keyring, no
  SysV IPC or POSIX message queues, no new namespaces), reports "S" (set up), reads its job and closes
  stdin, runs the program ("L" loaded or "P" program error) and then one test per command. A test is either
  an assert (run in-process, verdict "R") or a list of calls (the judge's split form, values as plain data
  "V"); the job sent here never holds an expected value of a split test.
* **Judge workers** (``judge`` in the config) never receive model code: the server reads their jobs and
  serves job after job with one long-lived test process that evaluates asserts on decoded plain values
  (all of a job's verdicts in one "B" command, or one by one when that fails).

Wire format everywhere: 4-byte big-endian length + payload. Values use the tagged JSON of
:func:`encode_value`; :func:`decode_value` accepts exactly what it produces.
"""

from __future__ import annotations

import builtins
import ctypes
import gc
import json
import marshal
import os
import resource
import secrets
import select
import signal
import struct
import sys
import time
from typing import Any

DIRTY = 71  # test process: the private tmp could not be cleared; the worker must be retired
BROKEN = 70  # test process: its own set-up failed before the program was loaded
EOF_EXIT = 3  # test process: stdin reached EOF before a job, the server should exit
MAX_RESULT_FRAME = 1 << 16
MAX_VALUE_BYTES = 4 << 20
MAX_VALUE_DEPTH = 100
MAX_VALUE_NODES = 1_000_000
VALUES_NAME = "__llm_coop_v__"


# ----------------------------------------------------------------------------- small system helpers
_LIBC = ctypes.CDLL(None, use_errno=True)
_PRCTL = _LIBC.prctl  # looked up once here: forked processes inherit it ready to call


def prctl(option: int, arg: int) -> None:
    if _PRCTL(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


# Functions a test process uses after model code ran take what they call as default arguments, bound when this
# module was imported: patching os, json or builtins from model code cannot reach them.
def write_frame(fd: int, payload: bytes, _write: Any = os.write, _len: Any = len) -> None:
    data = _len(payload).to_bytes(4, "big") + payload
    while data:
        data = data[_write(fd, data) :]


def read_exact(fd: int, n: int, _read: Any = os.read, _len: Any = len) -> bytes | None:
    chunks = []
    while n:
        chunk = _read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= _len(chunk)
    return b"".join(chunks)


def write_before(fd: int, data: bytes, deadline: float) -> bool:
    """Write all of `data` to a non-blocking fd before `deadline`; False if the reader stalled or left."""
    while data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([], [fd], [], left)[1]:
            return False
        try:
            data = data[os.write(fd, data) :]
        except BlockingIOError:
            continue
        except OSError:
            return False
    return True


# ----------------------------------------------------------------------------- seccomp (x86_64 only)
_AUDIT_ARCH_X86_64 = 0xC000003E
_DENIED_X86_64 = {
    "shmget": 29, "shmat": 30, "shmctl": 31, "semget": 64, "semop": 65, "semctl": 66, "shmdt": 67,
    "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71, "semtimedop": 220, "mq_open": 240,
    "mq_unlink": 241, "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272, "setns": 308,
    "mount": 165, "umount2": 166, "pivot_root": 155, "bpf": 321, "userfaultfd": 323, "perf_event_open": 298,
    "io_uring_setup": 425, "fsopen": 430, "open_tree": 428, "move_mount": 429, "fsmount": 432,
}  # fmt: skip
_CLONE, _CLONE3 = 56, 435
_CLONE_NEW_MASK = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
_EPERM, _ENOSYS = 1, 38


def seccomp_program() -> bytes | None:
    """The BPF filter (packed sock_filter array), or None on architectures this module does not know."""
    if os.uname().machine != "x86_64":
        return None
    ld_abs, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, kill, errno = 0x7FFF0000, 0x80000000, 0x00050000
    prog = [(ld_abs, 0, 0, 4), (jeq, 1, 0, _AUDIT_ARCH_X86_64), (ret, 0, 0, kill), (ld_abs, 0, 0, 0)]
    prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, errno | _ENOSYS)]  # the x32 ABI
    for number in sorted(_DENIED_X86_64.values()):
        prog += [(jeq, 0, 1, number), (ret, 0, 0, errno | _EPERM)]
    prog += [(jeq, 0, 1, _CLONE3), (ret, 0, 0, errno | _ENOSYS)]  # glibc falls back to clone
    prog += [(jeq, 0, 3, _CLONE), (ld_abs, 0, 0, 16), (jset, 0, 1, _CLONE_NEW_MASK), (ret, 0, 0, errno | _EPERM)]
    prog += [(ret, 0, 0, allow)]
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


def install_seccomp(program: bytes) -> None:
    """no_new_privs, then the filter (applies to this process and everything it forks)."""
    prctl(38, 1)  # PR_SET_NO_NEW_PRIVS
    buffer = ctypes.create_string_buffer(program, len(program))

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = Fprog(len(program) // 8, ctypes.addressof(buffer))
    if _PRCTL(22, ctypes.c_ulong(2), ctypes.byref(fprog), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")


# ----------------------------------------------------------------------------- private tmp
_CAP_SYS_ADMIN = 21


def _drop_sys_admin() -> None:
    """Remove CAP_SYS_ADMIN from our effective and permitted sets (no way back: no_new_privs is set)."""
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable}
    if _LIBC.capget(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    for index in (0, 1):  # effective and permitted of the low 32 capabilities
        data[index] &= ~(1 << _CAP_SYS_ADMIN)
    if _LIBC.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def mount_private_tmp(mounts: list[list[Any]]) -> None:
    """Privileged bwrap: mount fresh tmpfs with an inode limit over /tmp and /dev/shm (bwrap cannot set
    ``nr_inodes``), then give up CAP_SYS_ADMIN for good. `mounts`: [path, size bytes, inodes]."""
    mount = _LIBC.mount
    for path, size, inodes in mounts:
        options = f"size={size},nr_inodes={inodes},mode=1777".encode()
        if mount(b"tmpfs", path.encode(), b"tmpfs", ctypes.c_ulong(0x2 | 0x4), options) != 0:  # nosuid, nodev
            raise OSError(ctypes.get_errno(), f"mounting a tmpfs on {path} failed")
    _drop_sys_admin()


# ----------------------------------------------------------------------------- tmp cleanup
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _clear_entries(fd: int, done: set[tuple[int, int]]) -> str | None:
    """Unlink the non-directories in directory `fd`; return the name of one subdirectory still to visit."""
    with os.scandir(fd) as entries:
        for entry in entries:
            try:
                if not entry.is_dir(follow_symlinks=False):
                    os.unlink(entry.name, dir_fd=fd)
                    continue
                info = entry.stat(follow_symlinks=False)
                if (info.st_dev, info.st_ino) not in done:
                    return entry.name
            except OSError:
                continue
    return None


def clear_tree(path: str, deadline: float) -> bool:
    """Remove everything below `path`; True when it is empty afterwards.

    Iterative, with directory file descriptors: one open descriptor at a time (the walk goes back up through
    ``..``) and only single names passed to the kernel, so any depth and any total path length work.
    """
    fd = os.open(path, _DIR_FLAGS)
    names: list[str] = []
    done: set[tuple[int, int]] = set()
    try:
        while time.monotonic() < deadline:
            child = _clear_entries(fd, done)
            if child is not None:
                try:
                    os.chmod(child, 0o700, dir_fd=fd)
                    sub = os.open(child, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    info = os.stat(child, dir_fd=fd, follow_symlinks=False)
                    done.add((info.st_dev, info.st_ino))
                    continue
                os.close(fd)
                fd, names = sub, [*names, child]
                continue
            if not names:
                return not os.listdir(fd)
            info = os.fstat(fd)
            done.add((info.st_dev, info.st_ino))
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd, name = parent, names.pop()
            try:
                os.rmdir(name, dir_fd=fd)
            except OSError:
                pass
        return False
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- plain-data values
_SCALARS: dict[type, str] = {type(None): "n", bool: "b", int: "i", float: "f", complex: "c", str: "s", bytes: "y"}
_CONTAINERS: dict[type, str] = {list: "l", tuple: "t", set: "S", frozenset: "F", dict: "d"}


class Unsupported(Exception):
    """A value outside the plain-data whitelist (or too big/deep)."""


def _encode_scalar(tag: str, value: Any) -> list[Any]:
    if tag == "n":
        return ["n"]
    if tag == "b":
        return ["b", 1 if value else 0]
    if tag == "i":
        return ["i", hex(value)]
    if tag == "f":
        return ["f", float.hex(value)]
    if tag == "c":
        return ["c", float.hex(value.real), float.hex(value.imag)]
    if tag == "s":
        return ["s", value]
    return ["y", bytes.hex(value)]


def encode_value(value: Any, depth: int = 0, budget: list[int] | None = None) -> list[Any]:
    """Tagged JSON-able form of `value`; exact types only (``type(x) is int``), so subclasses, custom classes,
    generators etc. raise :class:`Unsupported`. Never calls a method of a non-whitelisted type."""
    budget = [MAX_VALUE_NODES] if budget is None else budget
    budget[0] -= 1
    if depth > MAX_VALUE_DEPTH or budget[0] < 0:
        raise Unsupported("value too deep or too large")
    kind = type(value)
    tag = _SCALARS.get(kind)
    if tag is not None:
        return _encode_scalar(tag, value)
    tag = _CONTAINERS.get(kind)
    if tag is None:
        raise Unsupported(f"unsupported result type {str.__str__(kind.__name__)[:60]}")
    if tag == "d":
        items = [[encode_value(k, depth + 1, budget), encode_value(v, depth + 1, budget)] for k, v in value.items()]
        return ["d", items]
    return [tag, [encode_value(item, depth + 1, budget) for item in value]]


_SCALAR_DECODERS: dict[str, Any] = {"i": lambda s: int(s, 16), "f": float.fromhex, "s": str, "y": bytes.fromhex}


def decode_value(data: Any, depth: int = 0) -> Any:
    """Inverse of :func:`encode_value` on untrusted input; raises ValueError for anything malformed."""
    if depth > MAX_VALUE_DEPTH + 1 or type(data) is not list or not data or type(data[0]) is not str:
        raise ValueError("malformed value")
    tag, args = data[0], data[1:]
    try:
        if tag == "n" and not args:
            return None
        if tag == "b" and args in ([0], [1]):
            return bool(args[0])
        if tag in ("i", "f", "s", "y") and len(args) == 1 and type(args[0]) is str:
            return _SCALAR_DECODERS[tag](args[0])
        if tag == "c" and len(args) == 2 and all(type(a) is str for a in args):
            return complex(float.fromhex(args[0]), float.fromhex(args[1]))
        if tag in ("l", "t", "S", "F") and len(args) == 1 and type(args[0]) is list:
            items = [decode_value(item, depth + 1) for item in args[0]]
            return {"l": list, "t": tuple, "S": set, "F": frozenset}[tag](items)
        if tag == "d" and len(args) == 1 and type(args[0]) is list:
            pairs = args[0]
            if not all(type(p) is list and len(p) == 2 for p in pairs):
                raise ValueError("malformed dict")
            return {decode_value(k, depth + 1): decode_value(v, depth + 1) for k, v in pairs}
    except (TypeError, OverflowError) as error:  # unhashable keys, bad numbers
        raise ValueError(f"malformed value: {error}") from None
    raise ValueError(f"malformed value tag {tag[:10]!r}")


def decode_results(text: str, calls: int) -> list[tuple[str, Any]]:
    """The per-call records of a "V" frame: ("ok", value) | ("raise", (type, message)) | ("bad", reason) |
    ("skip", None). Raises ValueError when the text is malformed (a forged or broken frame)."""
    try:
        records = json.loads(text)
    except RecursionError:
        raise ValueError("malformed results: nested too deeply") from None
    if type(records) is not list or len(records) != calls:
        raise ValueError("malformed results")
    out: list[tuple[str, Any]] = []
    for record in records:
        if type(record) is not list or not record:
            raise ValueError("malformed result record")
        if record[0] == "ok" and len(record) == 2:
            out.append(("ok", decode_value(record[1])))
        elif record[0] in ("raise", "bad") and all(type(r) is str for r in record[1:]) and len(record) == 3:
            out.append((record[0], (record[1][:80], record[2][:300])))
        elif record == ["skip"]:
            out.append(("skip", None))
        else:
            raise ValueError("malformed result record")
    return out


def values_getter(text: str) -> Any:
    """For the judge: ``get(i)`` returns call i's value, or raises what it raised (by type name)."""
    records = decode_results(text, len(json.loads(text)))
    raised = next((r for r in records if r[0] == "raise"), None)

    def get(index: int) -> Any:
        kind, data = records[index]
        if kind == "ok":
            return data
        name, message = data if kind != "skip" else (raised[1] if raised else ("RuntimeError", "not evaluated"))
        if kind == "bad":
            raise TypeError(message)
        error = getattr(builtins, name, None)
        if not (isinstance(error, type) and issubclass(error, Exception)):
            error = type(name if name.isidentifier() else "ModelError", (Exception,), {})
        raise error(message)

    return get


# ----------------------------------------------------------------------------- the test process
def describe(exc: BaseException, filename: str, limit: int) -> tuple[str, str]:
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


def _lock_down(cfg: dict[str, Any], lim: dict[str, Any], keep: tuple[int, ...], out_w: int) -> None:
    """Everything before model code: session, fds, uid, tmp cleared, rlimits, seccomp. Exits on failure."""
    os.setsid()
    prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the server
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out_w, 1)
    os.dup2(out_w, 2)
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 16)
    if cfg["child_uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["child_uid"])
        os.setuid(cfg["child_uid"])
    deadline = time.monotonic() + cfg["clean_seconds"]
    for scratch in cfg["scratch"]:
        if not clear_tree(scratch, deadline):
            os._exit(DIRTY)
    os.chdir(cfg["tmp"])
    for name, key in (("FSIZE", "max_file_bytes"), ("NOFILE", "max_open_files"), ("AS", "memory_bytes")):
        resource.setrlimit(getattr(resource, f"RLIMIT_{name}"), (lim[key], lim[key]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if cfg["limit_nproc"]:
        resource.setrlimit(resource.RLIMIT_NPROC, (lim["max_processes"], lim["max_processes"]))
    if cfg["seccomp_filter"] is not None:
        install_seccomp(cfg["seccomp_filter"])
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run_calls(
    payload: dict[str, Any], namespace: dict[str, Any], _exec: Any = exec, _eval: Any = eval, _compile: Any = compile,
    _base: Any = BaseException, _dumps: Any = json.dumps,
) -> bytes:  # fmt: skip
    """Run the setup and the calls of one split test; the records as JSON (no expected value is here)."""
    records: list[Any] = []
    raised = False
    try:
        _exec(_compile(payload["setup"], "<test>", "exec"), namespace)
    except _base as exc:
        records.append(["raise", *describe(exc, "<no line>", 300)])
        raised = True
    for source in payload["calls"][len(records) :]:
        if raised:
            records.append(["skip"])
            continue
        try:
            value = _eval(_compile(source, "<test>", "eval"), namespace)
        except _base as exc:  # no line number: the judge adds the assert's own when it re-raises
            records.append(["raise", *describe(exc, "<no line>", 300)])
            raised = True
            continue
        try:
            records.append(["ok", encode_value(value)])
        except (Unsupported, RecursionError, MemoryError) as exc:
            records.append(["bad", "UnsupportedResult", str.__str__(str(exc))[:300]])
    text = _dumps(records[: len(payload["calls"])])
    if len(text) > MAX_VALUE_BYTES:
        text = _dumps([["bad", "UnsupportedResult", "results too large"]] * len(payload["calls"]))
    return text.encode("ascii")


def _run_assert(
    source: str, namespace: dict[str, Any], _exec: Any = exec, _compile: Any = compile,
    _assertion: Any = AssertionError, _base: Any = BaseException,
) -> bytes:  # fmt: skip
    status, etype, msg = b"p", "", ""
    try:
        _exec(_compile(source, "<test>", "exec"), namespace)
    except _assertion as exc:
        status, (etype, msg) = b"f", describe(exc, "<test>", 300)
    except _base as exc:
        status, (etype, msg) = b"e", describe(exc, "<test>", 300)
    return status + etype.encode("utf-8", "replace") + b"\n" + msg.encode("utf-8", "replace")


def _judge(test: dict[str, Any]) -> bytes:
    """One verdict, in a fresh namespace: the prelude (trusted), the decoded values, the assert."""
    namespace: dict[str, Any] = {"__name__": "__judge__", "__builtins__": builtins}
    try:
        exec(compile(test["p"], "<prelude>", "exec"), namespace)
        namespace[VALUES_NAME] = values_getter(test["v"])
    except BaseException as exc:
        etype, msg = describe(exc, "<prelude>", 300)
        return b"e" + f"JudgeFailed: {etype}".encode() + b"\n" + msg.encode("utf-8", "replace")
    return _run_assert(test["a"], namespace)


def _read_own_job(inp: int, res_w: int) -> tuple[str, list[dict[str, Any]]]:
    """Program workers: the test process reads its job from the server's stdin itself (so the server never
    holds a program or a test), tells the server what it needs to supervise ("H"), and closes stdin."""
    head = read_exact(inp, 4)
    body = read_exact(inp, int.from_bytes(head, "big")) if head is not None else None
    os.close(inp)
    if body is None:
        os._exit(EOF_EXIT)
    job = json.loads(body)
    kinds = "".join("a" if "a" in test else "c" for test in job["tests"])
    meta = {"kinds": kinds, "timeout": job["timeout"], "budget": job["budget"], "max_failures": job["max_failures"]}
    write_frame(res_w, b"H" + json.dumps(meta).encode())
    return job["program"], job["tests"]


def _child(
    program: str | None, cfg: dict[str, Any], lim: dict[str, Any], res_w: int, ctl_r: int, out_w: int, inp: int
) -> None:
    """Body of a test process. Never returns. ``program`` None: it reads its own job (:func:`_read_own_job`)."""
    _lock_down(cfg, lim, (res_w, ctl_r, inp) if program is None else (res_w, ctl_r), out_w)
    write_frame(res_w, b"S")
    job_tests: list[dict[str, Any]] = []
    if program is None:
        program, job_tests = _read_own_job(inp, res_w)
    cpu = max(1, int(lim["cpu_seconds"] + 0.999))
    hard_cpu = cpu * (len(job_tests) + 1) + 1  # soft limit is moved to (used + cpu) before each test
    if cfg["judge"]:  # a long-lived judge process serves many jobs (it never runs model code)
        hard_cpu = resource.RLIM_INFINITY
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, hard_cpu))
    flushers = [(type(stream).flush, stream) for stream in (sys.stdout, sys.stderr)]
    loads, from_bytes, exit_ = marshal.loads, int.from_bytes, os._exit
    namespace: dict[str, Any] = {"__name__": "__program__", "__builtins__": builtins}
    try:
        exec(compile(program, "<program>", "exec"), namespace)
    except BaseException as exc:
        etype, msg = describe(exc, "<program>", 300)
        _flush(flushers)
        write_frame(res_w, b"P" + f"{etype}: {msg}".encode("utf-8", "replace"))
        os._exit(0)
    _flush(flushers)
    write_frame(res_w, b"L")
    while True:
        head = read_exact(ctl_r, 5)
        if head is None or head[:1] != b"G":
            exit_(0)
        test = loads(read_exact(ctl_r, from_bytes(head[1:], "big")) or b"N")
        if "i" in test:  # program workers send the index of a test this process read with its job
            test = job_tests[test["i"]]
        usage = resource.getrusage(resource.RUSAGE_SELF)
        try:
            used = int(usage.ru_utime + usage.ru_stime)
            resource.setrlimit(resource.RLIMIT_CPU, (min(used + cpu, hard_cpu), hard_cpu))
        except (ValueError, OSError):
            pass
        kind = b"R" if "a" in test else b"V"
        if "batch" in test:  # judge workers only: every verdict of a job in one round trip
            kind, body = b"B", marshal.dumps([_judge(t) for t in test["batch"]])
        elif cfg["judge"]:
            body = _judge(test)
        else:
            body = _run_assert(test["a"], namespace) if kind == b"R" else _run_calls(test["c"], namespace)
        _flush(flushers)
        nonce = read_exact(ctl_r, 32) or b""  # only now: the nonce is not in this process while the test ran
        write_frame(res_w, kind + nonce + body)


def _flush(flushers: list[Any], _base: Any = BaseException) -> None:
    for method, stream in flushers:
        try:
            method(stream)
        except _base:
            pass


# ----------------------------------------------------------------------------- supervising test processes
def reap(pid: int, cfg: dict[str, Any]) -> tuple[int, float]:
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
                os.kill(-1, signal.SIGKILL)  # everything in our pid namespace except pid 1 (server) and us
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
                kill_children()
            time.sleep(0.0005)


def kill_children() -> None:
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


class TestProcess:
    """The server's view of one test process: its pipes, output capture and frame buffer."""

    def __init__(self, program: str | None, lim: dict[str, Any], cfg: dict[str, Any], inp: int = -1) -> None:
        res_r, res_w = os.pipe()
        ctl_r, ctl_w = os.pipe()
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                for fd in (res_r, ctl_w, out_r):
                    os.close(fd)
                _child(program, cfg, lim, res_w, ctl_r, out_w, inp)
            finally:
                os._exit(BROKEN)
        for fd in (res_w, ctl_r, out_w):
            os.close(fd)
        for fd in (res_r, out_r, ctl_w):
            os.set_blocking(fd, False)
        self.pid, self.res, self.ctl, self.out, self.cfg, self.lim = pid, res_r, ctl_w, out_r, cfg, lim
        self.pidfd = os.pidfd_open(pid)
        self.poller = select.poll()
        for fd in (res_r, out_r, self.pidfd):
            self.poller.register(fd, select.POLLIN)
        self.buf = bytearray()
        self.output, self.dropped, self.cap = b"", 0, lim["max_output_bytes"]
        self.exited, self.res_open, self.out_open, self.reaped = False, True, True, False

    def drain_output(self) -> None:
        """Read what is available on the capture pipe, keeping at most `cap` bytes per test."""
        while self.out_open:
            try:
                data = os.read(self.out, 1 << 16)
            except BlockingIOError:
                return
            if not data:
                self.out_open = False
                self.poller.unregister(self.out)
                return
            room = max(self.cap - len(self.output), 0)
            self.output += data[:room]
            self.dropped += len(data) - len(data[:room])

    def take_output(self) -> str:
        self.drain_output()
        text = self.output.decode("utf-8", "replace")
        if self.dropped:
            text += f"\n[output truncated: {self.dropped} bytes dropped]"
        self.output, self.dropped = b"", 0
        return text

    def _read_result(self) -> bytes:
        try:
            data = os.read(self.res, 1 << 16)
        except BlockingIOError:
            return b""
        if not data:
            self.res_open = False
            self.poller.unregister(self.res)
        return data

    def next_frame(self, deadline: float, limit: int = MAX_RESULT_FRAME) -> bytes | str:
        """The next frame from the child, or "exit" / "timeout" / "violation"."""
        while True:
            if len(self.buf) >= 4:
                size = int.from_bytes(self.buf[:4], "big")
                if size > limit:
                    return "violation"
                if len(self.buf) >= 4 + size:
                    payload = bytes(self.buf[4 : 4 + size])
                    del self.buf[: 4 + size]
                    return payload
            if self.exited:
                return "exit"
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            for fd, _ in self.poller.poll(left * 1000):
                if fd == self.pidfd:
                    self.exited = True
                    while self.res_open and (data := self._read_result()):
                        self.buf += data
                elif fd == self.out:
                    self.drain_output()
                elif self.res_open:
                    self.buf += self._read_result()

    def finish(self) -> tuple[int | None, int | None, bool]:
        """Kill and reap it and all it left behind; (exit code, terminating signal, CPU limit hit)."""
        if self.reaped:
            return None, None, False
        self.reaped = True
        wstatus, cpu = reap(self.pid, self.cfg)
        self.drain_output()
        for fd in (self.res, self.ctl, self.out, self.pidfd):
            os.close(fd)
        sig = os.WTERMSIG(wstatus) if os.WIFSIGNALED(wstatus) else None
        code = os.WEXITSTATUS(wstatus) if os.WIFEXITED(wstatus) else None
        cpu_limit = max(1, int(self.lim["cpu_seconds"] + 0.999))
        return code, sig, sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= cpu_limit - 0.05)

    def failure(self, event: bytes | str, what: str) -> tuple[str, str, str]:
        """(status, error_type, message) when a phase ended without its expected frame; reaps the process."""
        code, sig, cpu_hit = self.finish()
        if event == "timeout":
            return "timeout", "Timeout", f"wall-clock limit of {what} exceeded"
        if event != "exit":
            return "error", "ProtocolViolation", "unexpected, forged or out-of-order data on the result channel"
        if cpu_hit:
            return "timeout", "Timeout", f"CPU time limit of {self.lim['cpu_seconds']:g} s exceeded"
        if sig is not None:
            return "error", "Killed", f"process killed by {signal.Signals(sig).name} before the test finished"
        return "error", "EarlyExit", f"process exited with status {code} before finishing"


# ----------------------------------------------------------------------------- running jobs
def _command(test: dict[str, Any], nonce: bytes) -> bytes:
    payload = marshal.dumps(test)
    return b"G" + len(payload).to_bytes(4, "big") + payload + nonce


def _result(body: bytes) -> tuple[str, str | None, str, str | None] | None:
    """(status, type, message, None) of an assert's result body, else None."""
    if body[:1] not in (b"p", b"f", b"e"):
        return None
    raw_type, _, text = body[1:].partition(b"\n")
    status = {b"p": "passed", b"f": "failed", b"e": "error"}[body[:1]]
    return status, raw_type.decode("utf-8", "replace") or None, text.decode("utf-8", "replace"), None


def _verdict(event: bytes | str, nonce: bytes, kind: bytes) -> tuple[str, str | None, str, str | None] | None:
    """(status, type, message, value) of a well-formed result frame for this nonce, else None."""
    if not isinstance(event, bytes) or event[:1] != kind or event[1:33] != nonce or len(event) < 34:
        return None
    if kind == b"V":
        try:
            return "value", None, "", event[33:].decode("ascii")
        except UnicodeDecodeError:
            return None
    return _result(event[33:])


class Job:
    """One job: the program, then the tests in order, in as few test processes as possible."""

    def __init__(self, job: dict[str, Any], emit: Any, cfg: dict[str, Any], inp: int = -1) -> None:
        self.program, self.tests, self.timeout = job["program"], job["tests"], job["timeout"]
        self.lim = {**cfg["limits"], "tests": len(job["tests"])}
        self.inp = inp
        self.max_failures, self.emit, self.cfg = job["max_failures"], emit, cfg
        self.deadline = time.monotonic() + job["budget"]
        self.budget = job["budget"]
        self.index, self.failures, self.program_done = 0, 0, False

    def limit(self) -> tuple[float, str]:
        """The deadline of the next phase and how to describe hitting it."""
        own = time.monotonic() + self.timeout
        if own <= self.deadline:
            return own, f"{self.timeout:g} s"
        return self.deadline, f"the job's wall-clock budget of {self.budget:g} s"

    def open(self) -> bool:
        """True while there is work left and the failure count and budget allow it."""
        if self.failures >= self.max_failures or time.monotonic() >= self.deadline:
            return False
        return self.index < len(self.tests) or not self.program_done

    def respawn(self) -> TestProcess | None:
        """A fresh test process that has read the job again (the host resends it); None: the worker is dirty."""
        proc = TestProcess(None, self.lim, self.cfg, self.inp)
        if proc.next_frame(time.monotonic() + self.cfg["clean_seconds"] + 5.0) != b"S":
            code, sig, _ = proc.finish()
            self.emit({"e": "dirty", "code": code, "signal": sig})
            return None
        self.emit({"e": "resend"})
        return proc

    def run(self, first: TestProcess | None) -> None:
        """Run the job; `first` is the test process that read it (forked before the job existed)."""
        while self.open():
            proc = first or self.respawn()
            if proc is None:
                return
            if proc is not first and not (
                isinstance(header := proc.next_frame(self.limit()[0]), bytes) and header[:1] == b"H"
            ):
                self.fail_load(proc, header)
                continue
            first = None
            if not self.load(proc):
                if not self.program_done:
                    break
                continue
            self.run_tests(proc)
            proc.finish()
        self.emit({"e": "done"})

    def fail_load(self, proc: TestProcess, event: bytes | str) -> None:
        status, etype, msg = proc.failure(event, self.limit()[1])
        self.emit({"e": "test", "status": status, "type": etype, "msg": msg[:300], "output": ""})
        self.failures += 1
        self.index += 1

    def load(self, proc: TestProcess) -> bool:
        """Wait for the program to load; emit the program event (first time) or the failed test."""
        deadline, what = self.limit()
        event = proc.next_frame(deadline)
        if event == b"L":
            if not self.program_done:
                self.emit({"e": "program", "status": "ok", "error": None, "output": proc.take_output()})
                self.program_done = True
            return True
        if isinstance(event, bytes) and event[:1] == b"P" and not proc.buf:
            proc.finish()
            status, etype, msg = "error", "", event[1:].decode("utf-8", "replace")
        else:
            status, etype, msg = proc.failure(event, what)
            msg = f"{etype}: {msg}"
        if not self.program_done:
            failed = "timeout" if status == "timeout" else "error"
            self.emit({"e": "program", "status": failed, "error": msg, "output": proc.take_output()})
            return False
        self.emit({"e": "test", "status": status, "type": msg.partition(":")[0], "msg": msg[:300], "output": ""})
        self.failures += 1
        self.index += 1
        return False

    def run_tests(self, proc: TestProcess) -> None:
        """Run tests in `proc` until one ends it (then it is reaped) or none are left."""
        while self.index < len(self.tests) and self.open():
            test = self.tests[self.index]
            kind = b"R" if "a" in test else b"V"
            nonce = secrets.token_hex(16).encode()
            deadline, what = self.limit()
            sent = write_before(proc.ctl, _command(test, nonce), deadline)
            event: bytes | str = proc.next_frame(deadline, MAX_VALUE_BYTES + 64) if sent else "timeout"
            verdict = _verdict(event, nonce, kind)
            if verdict is None:
                verdict = (*proc.failure(event, what), None)
                self.failures += 1
            output = proc.take_output()
            status, etype, msg, value = verdict
            self.emit(
                {"e": "test", "status": status, "type": etype, "msg": msg[:300], "output": output, "value": value}
            )
            self.index += 1
            if proc.reaped:
                return

    def serve(self, proc: TestProcess | None) -> TestProcess | None:
        """Judge workers: run the job's tests in `proc` (kept across jobs; a new one when it is gone)."""
        self.emit({"e": "program", "status": "ok", "error": None, "output": ""})
        self.program_done = True
        while self.open():
            if proc is None or proc.reaped:
                proc = TestProcess("", self.lim, self.cfg)
                if proc.next_frame(time.monotonic() + self.cfg["clean_seconds"] + 5.0) != b"S" or (
                    proc.next_frame(time.monotonic() + self.timeout) != b"L"
                ):
                    code, sig, _ = proc.finish()
                    self.emit({"e": "dirty", "code": code, "signal": sig})
                    return None
            if not (self.index == 0 and len(self.tests) > 1 and self.batch(proc)):
                self.run_tests(proc)
        self.emit({"e": "done"})
        return proc

    def batch(self, proc: TestProcess) -> bool:
        """Judge workers: all verdicts in one command. False (process reaped) if that did not work in one
        test's time; the tests are then run one by one, each with its own time limit."""
        nonce = secrets.token_hex(16).encode()
        deadline, what = self.limit()
        sent = write_before(proc.ctl, _command({"batch": self.tests}, nonce), deadline)
        event = proc.next_frame(deadline, MAX_VALUE_BYTES) if sent else "timeout"
        results = None
        if isinstance(event, bytes) and event[:1] == b"B" and event[1:33] == nonce:
            bodies = marshal.loads(event[33:])  # from a process that never ran model code
            results = [_result(body) for body in bodies] if len(bodies) == len(self.tests) else None
        if results is None or None in results:
            proc.failure(event, what)
            return False
        for status, etype, msg, _ in filter(None, results):
            self.emit({"e": "test", "status": status, "type": etype, "msg": msg[:300], "output": "", "value": None})
        self.index = len(self.tests)
        return True


def _read_job(inp: int) -> dict[str, Any] | None:
    head = read_exact(inp, 4)
    body = read_exact(inp, int.from_bytes(head, "big")) if head is not None else None
    return None if body is None else dict(json.loads(body))


def _emitter(out: int) -> Any:
    def emit(event: dict[str, Any]) -> None:
        write_frame(out, json.dumps(event).encode())

    return emit


def judge_loop(inp: int, out: int, cfg: dict[str, Any]) -> None:
    """Judge workers run trusted code on plain data only, so one judge process serves job after job."""
    proc: TestProcess | None = None
    while (job := _read_job(inp)) is not None:
        proc = Job(job, _emitter(out), cfg).serve(proc)


def serve_jobs(inp: int, out: int, cfg: dict[str, Any]) -> None:
    """Program workers: before each job, fork the test process that will read it; supervise the job."""
    emit = _emitter(out)
    while True:
        first = TestProcess(None, {**cfg["limits"], "tests": 0}, cfg, inp)
        if first.next_frame(time.monotonic() + cfg["clean_seconds"] + 5.0) != b"S":
            first.finish()
            emit({"e": "dirty"})
            return
        header: bytes | str = "timeout"
        while header == "timeout":  # waits for the next job (or the end of stdin)
            header = first.next_frame(time.monotonic() + 3600.0)
        if not (isinstance(header, bytes) and header[:1] == b"H"):
            code, _, _ = first.finish()
            if code != EOF_EXIT:
                emit({"e": "dirty", "code": code})
            return
        meta = json.loads(header[1:])
        tests = [{("a" if kind == "a" else "c"): None, "i": i} for i, kind in enumerate(meta["kinds"])]
        Job({**meta, "program": None, "tests": tests}, emit, cfg, inp).run(first)


class _Stop(Exception):
    pass


def _stop(signum: int, frame: Any) -> None:
    raise _Stop


def reaper(config: str) -> None:
    """Subprocess backend: a child-subreaper that outlives the server. It runs the server as its child and,
    when the server ends for any reason (or the host sends SIGTERM, or dies), kills every descendant left,
    including ``setsid`` ones (orphans are reparented to us), before exiting."""
    prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
    signal.signal(signal.SIGTERM, _stop)
    prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: the host died, so sweep too
    if os.getppid() != json.loads(config)["parent"]:
        os._exit(0)
    pid = os.fork()
    if pid == 0:
        sys.argv[1:] = [config]
        code = 1
        try:
            main()
            code = 0
        finally:
            os._exit(code)
    try:
        os.waitpid(pid, 0)
    except _Stop:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        kill_children()
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def main() -> None:
    cfg = json.loads(sys.argv[1])
    inp, out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as pid 1, a signal without a handler cannot reach us
    prctl(36, 1)  # PR_SET_CHILD_SUBREAPER (orphans of test processes come back to us)
    prctl(4, 0)  # PR_SET_DUMPABLE=0: no ptrace / /proc/<pid>/fd access by same-uid children
    if not cfg["kill_all"]:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the reaper (bwrap: --die-with-parent instead)
    if cfg.get("tmp_mounts"):
        mount_private_tmp(cfg["tmp_mounts"])
        os.chdir(cfg["tmp"])
    for name in cfg["preload"]:
        try:
            __import__(name)
        except ImportError:
            pass
    cfg["seccomp_filter"] = seccomp_program() if cfg["seccomp"] else None
    gc.freeze()  # collections in forked processes then leave the inherited heap alone (fewer copy-on-write faults)
    ready = {"e": "ready", "uid": os.getuid(), "child_uid": cfg["child_uid"], "pid": os.getpid()}
    write_frame(out, json.dumps({**ready, "seccomp": cfg["seccomp_filter"] is not None}).encode())
    if cfg["judge"]:
        judge_loop(inp, out, cfg)
        return
    serve_jobs(inp, out, cfg)


if __name__ == "__main__":
    if sys.argv[1] == "--reaper":
        reaper(sys.argv[2])
    else:
        main()
