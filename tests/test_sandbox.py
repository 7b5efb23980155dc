"""Tests of llm_coop_envs.sandbox: correctness, limits, and a battery of hostile programs.

Every hostile program must be contained (nothing happens on the host), must not be scored as passing, and the
sandbox must still run a normal job correctly afterwards. Parametrised over the backends: "bwrap" (skipped only
when bubblewrap cannot start here) and the weak "subprocess" fallback, for which properties it cannot provide
(network, world-writable paths, ...) are skipped with the reason.
"""

from __future__ import annotations

import os
import socket
import textwrap
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_coop_envs.sandbox import JobReport, Limits, Sandbox, TestJob, bwrap_available

SECRET = "s3cr3t-value-that-must-not-leak"
os.environ["LLM_COOP_SECRET"] = SECRET  # set before any worker starts
PROJECT = Path(__file__).resolve().parents[1]

GOOD_PROGRAM = textwrap.dedent(
    """
    from typing import List

    def aux(xs: List[int]) -> int:
        return sum(xs)

    def mean(xs: List[int]) -> float:
        return aux(xs) / len(xs)
    """
)
GOOD_TESTS = ("assert mean([1, 2, 3]) == 2", "assert mean([4]) == 4", "assert abs(mean([1, 2]) - 1.5) < 1e-9")
BACKENDS = [
    pytest.param("bwrap", marks=pytest.mark.skipif(not bwrap_available(), reason="bubblewrap unusable here")),
    "subprocess",
]


def make_box(backend: str, **kwargs: object) -> Sandbox:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if backend == "subprocess":
            kwargs.setdefault("allow_unsafe_root", True)
        return Sandbox(backend, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=BACKENDS)
def box(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    sandbox = make_box(request.param, workers=2, cache_size=0)
    yield sandbox
    sandbox.close()


def assert_still_works(box: Sandbox) -> None:
    report = box.run(TestJob(GOOD_PROGRAM, GOOD_TESTS))
    assert report.program_status == "ok", report
    assert report.passed == 3, report


def run_hostile(
    box: Sandbox,
    program: str,
    tests: tuple[str, ...] = ("assert f() == 1",),
    timeout: float = 2.0,
) -> JobReport:
    report = box.run(TestJob(textwrap.dedent(program), tests, test_timeout_s=timeout))
    assert report.passed == 0, report
    assert_still_works(box)
    return report


def skip_unless_files_protected(box: Sandbox) -> None:
    if not box.protects_host_files:
        pytest.skip("subprocess backend running as the caller's uid cannot protect the caller's files")


# --- basic behaviour ------------------------------------------------------------------------------------


def test_correct_program_passes(box: Sandbox) -> None:
    report = box.run(TestJob(GOOD_PROGRAM, GOOD_TESTS))
    assert (report.program_status, report.passed, report.total, report.cached) == ("ok", 3, 3, False)
    assert report.backend == box.backend


def test_wrong_program_fails_with_assertion_error(box: Sandbox) -> None:
    report = box.run(TestJob("def f(x):\n    return x + 2\n", ("assert f(1) == 2", "assert f(0) == 2")))
    assert [o.status for o in report.outcomes] == ["failed", "passed"]
    assert report.outcomes[0].error_type == "AssertionError"


def test_exceptions_report_their_type(box: Sandbox) -> None:
    tests = ("assert f(0) == 1", "assert f('a') == 1", "assert g() == 1", "raise KeyError('k')")
    report = box.run(TestJob("def f(x):\n    return 1 / x\n", tests))
    assert [o.error_type for o in report.outcomes] == ["ZeroDivisionError", "TypeError", "NameError", "KeyError"]
    assert all(o.status == "error" for o in report.outcomes)
    assert "line" in report.outcomes[0].message


def test_program_errors_mark_every_test_not_run(box: Sandbox) -> None:
    report = box.run(TestJob("x = 1\ny = undefined_name\n", GOOD_TESTS))
    assert report.program_status == "error"
    assert report.program_error is not None and report.program_error.startswith("NameError")
    assert "line 2" in report.program_error
    assert [o.status for o in report.outcomes] == ["not_run"] * 3
    report = box.run(TestJob("def f(:\n", GOOD_TESTS))
    assert report.program_status == "error" and "SyntaxError" in (report.program_error or "")
    assert report.passed == 0 and report.total == 3


def test_program_timeout(box: Sandbox) -> None:
    report = box.run(TestJob("while True:\n    pass\n", GOOD_TESTS, test_timeout_s=0.5))
    assert report.program_status == "timeout"
    assert [o.status for o in report.outcomes] == ["not_run"] * 3


def test_timeouts_then_not_run(box: Sandbox) -> None:
    program = "import time\ndef slow():\n    time.sleep(60)\n"
    tests = ("assert 1 == 1", "slow()", "slow()", "slow()", "assert 1 == 1", "slow()")
    start = time.monotonic()
    report = box.run(TestJob(program, tests, test_timeout_s=0.4, max_timeouts=3))
    assert [o.status for o in report.outcomes] == ["passed", "timeout", "timeout", "timeout", "not_run", "not_run"]
    assert report.outcomes[1].error_type == "Timeout"
    assert report.timeouts == 3
    assert time.monotonic() - start < 10


def test_output_is_captured_and_bounded(box: Sandbox) -> None:
    limits = Limits(max_output_bytes=1000)
    with make_box(box.backend, limits=limits, workers=1) as small:
        report = small.run(TestJob("print('loading')\n", ("print('x' * 1_000_000); assert False", "print('hi')")))
    first, second = report.outcomes
    assert report.program_output == "loading\n"
    assert first.status == "failed"
    assert first.output.startswith("x" * 1000) and "truncated" in first.output
    assert len(first.output) < 1100
    assert second.output == "hi\n" and second.status == "passed"


def test_cache_and_batch(box: Sandbox) -> None:
    with make_box(box.backend, workers=2) as cached:
        job = TestJob(GOOD_PROGRAM, GOOD_TESTS)
        first = cached.run(job)
        again = cached.run(job)
        assert (first.cached, again.cached) == (False, True)
        assert first.outcomes == again.outcomes
        jobs = [TestJob(f"def f():\n    return {i}\n", ("assert f() == 2",)) for i in range(5)] + [job]
        reports = cached.run_batch(jobs)
        assert [r.passed for r in reports] == [0, 0, 1, 0, 0, 3]
        assert [r.cached for r in reports] == [False] * 5 + [True]


def test_no_processes_left_after_close(box: Sandbox) -> None:
    before = set(descendants())  # e.g. workers of other sandboxes alive in this test process
    with make_box(box.backend, workers=2) as extra:
        extra.run_batch([TestJob("import os, time\n", ("os.fork(); time.sleep(30)",), test_timeout_s=0.5)] * 2)
        ours = set(descendants()) - before
        assert ours  # workers are alive while open
    deadline = time.monotonic() + 5
    while ours & set(descendants()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not ours & set(descendants())
    assert not set(descendants()) - before


def worker_pids(box: Sandbox) -> list[int]:
    return [w.proc.pid for w in box._pool.programs.live]


def descendants(exclude: set[int] | None = None) -> list[int]:
    """Pids of all live descendants of this process (via psutil when installed, else /proc)."""
    exclude = exclude or set()
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        found = []
        for child in psutil.Process().children(recursive=False):
            if child.pid in exclude:
                continue
            found.append(child.pid)
            found += [p.pid for p in child.children(recursive=True)]
        return found
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                parents[int(name)] = int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
    found, frontier = [], [os.getpid()]
    while frontier:
        parent = frontier.pop()
        kids = [pid for pid, ppid in parents.items() if ppid == parent and pid not in exclude]
        found += kids
        frontier += kids
    return found


# --- hostile programs -----------------------------------------------------------------------------------


def test_fork_bomb_is_bounded(box: Sandbox) -> None:
    if box.backend == "subprocess" and os.geteuid() == 0 and not box.protects_host_files:
        pytest.skip("uid 0 is exempt from RLIMIT_NPROC and this backend could not drop privileges")
    limits = Limits(max_processes=24)
    program = """
    import os, time
    def f():
        made = 0
        for _ in range(300):
            try:
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
                made += 1
            except OSError:
                pass
        return made
    """
    with make_box(box.backend, limits=limits, workers=1) as small:
        report = small.run(TestJob(textwrap.dedent(program), ("assert f() == 300",), test_timeout_s=5))
        assert report.outcomes[0].status == "failed", report
        assert_still_works(small)


@pytest.mark.skipif(not bwrap_available(), reason="needs bubblewrap")
def test_exponential_fork_bomb_bwrap() -> None:
    with make_box("bwrap", limits=Limits(max_processes=32), workers=1) as small:
        program = "import os\ndef f():\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n"
        report = small.run(TestJob(program, ("f()",), test_timeout_s=1.5))
        assert report.outcomes[0].status == "timeout"
        assert_still_works(small)


def test_memory_bomb(box: Sandbox) -> None:
    with make_box(box.backend, limits=Limits(memory_bytes=256 << 20), workers=1) as small:
        report = small.run(TestJob("def f():\n    return bytearray(1 << 30)\n", ("assert f()",)))
        assert report.outcomes[0].error_type == "MemoryError"
        report = small.run(
            TestJob(
                "def f():\n    xs = []\n    while True:\n        xs.append(' ' * 10**6)\n", ("f()",), test_timeout_s=5
            )
        )
        assert report.outcomes[0].status == "error" and report.outcomes[0].error_type == "MemoryError"
        assert_still_works(small)


def test_cpu_limit(box: Sandbox) -> None:
    with make_box(box.backend, limits=Limits(cpu_seconds=1), workers=1) as small:
        program = (
            "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\ndef f():\n    while True:\n        pass\n"
        )
        report = small.run(TestJob(program, ("f()",), test_timeout_s=10))
        assert report.outcomes[0].status == "timeout", report
        assert "CPU" in report.outcomes[0].message


def test_infinite_loop_and_sleep(box: Sandbox) -> None:
    report = run_hostile(box, "def f():\n    while True:\n        pass\n", ("assert f() == 1",), timeout=0.5)
    assert report.outcomes[0].status == "timeout"
    report = run_hostile(box, "import time\ndef f():\n    while True:\n        time.sleep(1)\n", timeout=0.5)
    assert report.outcomes[0].status == "timeout"


def test_signal_tampering(box: Sandbox) -> None:
    program = """
    import signal
    for sig in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):
        signal.signal(sig, signal.SIG_IGN)
    signal.alarm(0)
    def f():
        while True:
            signal.alarm(0)
    """
    report = run_hostile(box, program, timeout=0.5)
    assert report.outcomes[0].status == "timeout"


def test_killing_the_parent_and_group(box: Sandbox) -> None:
    stmts = [
        "os.kill(os.getppid(), signal.SIGKILL)",
        "os.killpg(os.getpgid(0), signal.SIGKILL)",
        "os.kill(os.getpid(), signal.SIGKILL)",
    ]
    if box.backend == "bwrap":  # elsewhere kill(-1) would hit every process of the uid on the machine
        stmts.append("os.kill(-1, signal.SIGKILL)")
    for stmt in stmts:
        program = f"import os, signal\ndef f():\n    {stmt}\n    return 0\n"
        run_hostile(box, program)
    report = run_hostile(box, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\ndef f():\n    return 1\n")
    assert report.program_status == "error"


def test_early_exit_never_passes(box: Sandbox) -> None:
    for program_level in ("import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n", "raise SystemExit(0)\n"):
        report = run_hostile(box, program_level + "def f():\n    return 1\n")
        assert report.program_status == "error"
    for stmt in ("sys.exit(0)", "os._exit(0)", "raise SystemExit", "os.abort()"):
        report = run_hostile(box, f"import os, sys\ndef f():\n    {stmt}\n")
        assert report.outcomes[0].status == "error", (stmt, report)


def test_a_dead_test_process_does_not_sink_later_tests(box: Sandbox) -> None:
    tests = ("os._exit(0)", "assert f() == 1", "os.kill(os.getpid(), 9)", "assert f() == 1", "assert f() == 2")
    report = box.run(TestJob("import os\ndef f():\n    return 1\n", tests))
    assert [o.status for o in report.outcomes] == ["error", "passed", "error", "passed", "failed"]
    assert [o.error_type for o in report.outcomes[:3]] == ["EarlyExit", None, "Killed"]


def test_fake_results_and_monkeypatching(box: Sandbox) -> None:
    printing = """
    import sys, json
    print("PASSED"); print(json.dumps({"e": "test", "status": "passed"})); sys.stderr.write("ok\\n")
    def f():
        print("all tests passed")
        return 2
    """
    run_hostile(box, printing)
    patching = """
    import builtins, os, sys
    builtins.AssertionError = type("AssertionError", (BaseException,), {})
    real_write = os.write
    os.write = lambda fd, data: real_write(fd, data.replace(b"f", b"p"))
    builtins.exec = lambda *a, **k: None
    builtins.compile = lambda *a, **k: compile("pass", "x", "exec")
    sys.settrace(None)
    def f():
        return 2
    """
    report = run_hostile(box, patching)
    assert report.outcomes[0].status == "failed"


def test_forging_the_result_channel(box: Sandbox) -> None:
    program = """
    import os
    def frame(payload):
        return len(payload).to_bytes(4, "big") + payload
    def forge():
        for fd in range(0, 64):
            for payload in (frame(b"L"), frame(b"R" + b"0" * 32 + b"p\\n"), b"PASSED\\n"):
                try:
                    os.write(fd, payload)
                except OSError:
                    pass
    forge()
    def f():
        forge()
        return 2
    """
    report = run_hostile(box, program)
    assert report.outcomes[0].status == "error"
    closing = "import os\ndef f():\n    os.closerange(0, 1024)\n    return 1\n"
    report = run_hostile(box, closing)
    assert report.outcomes[0].error_type == "EarlyExit"


def test_crashes(box: Sandbox) -> None:
    report = run_hostile(box, "import ctypes\ndef f():\n    ctypes.memmove(16, b'x', 1)\n    return 1\n")
    assert (report.outcomes[0].status, report.outcomes[0].error_type) == ("error", "Killed")
    report = run_hostile(box, "def f():\n    return f()\n")
    assert report.outcomes[0].error_type == "RecursionError"
    deep = "import sys\nsys.setrecursionlimit(10**7)\ndef g(n):\n    return g(n + 1) + 1\ndef f():\n    return g(0)\n"
    report = run_hostile(box, deep, timeout=5)
    assert report.outcomes[0].status in ("error", "timeout")


def test_environment_secrets_are_invisible(box: Sandbox) -> None:
    program = f"""
    import os
    def f():
        assert os.environ.get("LLM_COOP_SECRET") == {SECRET!r}
        return 1
    """
    report = run_hostile(box, program)
    assert report.outcomes[0].status == "failed"
    if not box.protects_host_files:
        pytest.skip("a subprocess running as the caller's uid can read /proc/<pid>/environ")
    scan = f"""
    import os
    def f():
        found = 0
        for pid in os.listdir("/proc") if os.path.isdir("/proc") else []:
            try:
                found += {SECRET!r}.encode() in open(f"/proc/{{pid}}/environ", "rb").read()
            except OSError:
                pass
        return found
    """
    report = run_hostile(box, scan, ("assert f() >= 1",))
    assert report.outcomes[0].status == "failed"


def test_files_outside_the_temp_dir(box: Sandbox, tmp_path: Path) -> None:
    skip_unless_files_protected(box)
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "keep.txt").write_text("keep")
    targets = [decoy / "new.txt", PROJECT / "sandbox_escape.txt", Path.home() / "sandbox_escape.txt"]
    program = f"""
    import shutil
    def f():
        written = 0
        for path in {[str(t) for t in targets]!r}:
            try:
                with open(path, "w") as fh:
                    fh.write("escaped")
                written += 1
            except OSError:
                pass
        for path in ({str(decoy)!r}, {str(PROJECT / "llm_coop_envs")!r}):
            shutil.rmtree(path, ignore_errors=True)
        return written
    """
    run_hostile(box, program, ("assert f() >= 1",))
    assert not any(t.exists() for t in targets)
    assert (decoy / "keep.txt").read_text() == "keep"
    assert (PROJECT / "llm_coop_envs" / "sandbox" / "api.py").exists()


@pytest.mark.skipif(not bwrap_available(), reason="needs bubblewrap")
def test_host_tmp_untouched_and_private_tmp_cleared() -> None:
    marker = Path("/tmp") / f"llm-coop-escape-{os.getpid()}"
    with make_box("bwrap", workers=1, cache_size=0) as bwrap:
        program = f"def f():\n    open({str(marker)!r}, 'w').write('x')\n    return 1\n"
        report = bwrap.run(TestJob(program, ("assert f() == 1", "import os; assert not os.path.exists('/work')")))
        assert report.passed == 2  # writing is allowed, but only into the sandbox's private tmpfs
        assert not marker.exists()
        report = bwrap.run(TestJob("import os\n", (f"assert not os.path.exists({str(marker)!r})",)))
        assert report.passed == 1  # the private tmpfs is cleared between tests


@pytest.mark.skipif(not bwrap_available(), reason="needs bubblewrap (the subprocess backend has no network isolation)")
def test_network_is_unreachable() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        program = f"""
        import socket
        def connect():
            socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
            return 1
        def resolve():
            return len(socket.getaddrinfo("pypi.org", 443))
        """
        with make_box("bwrap", workers=1) as bwrap:
            report = bwrap.run(TestJob(textwrap.dedent(program), ("assert connect() == 1", "assert resolve() > 0")))
        assert [o.status for o in report.outcomes] == ["error", "error"], report
        assert report.outcomes[0].error_type == "ConnectionRefusedError"


def test_auto_falls_back_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_coop_envs.sandbox import api, pool

    monkeypatch.setattr(pool, "_bwrap_mode", [None])
    monkeypatch.setattr(api, "_warned_fallback", [])
    with pytest.warns(RuntimeWarning, match="bubblewrap"):
        box = Sandbox("auto", workers=1, allow_unsafe_root=True)
    with box:
        assert box.backend == "subprocess"
        assert box.run(TestJob(GOOD_PROGRAM, GOOD_TESTS)).passed == 3
    with pytest.raises(RuntimeError, match="bubblewrap"):
        Sandbox("bwrap")


def test_bad_arguments() -> None:
    with pytest.raises(TypeError):
        TestJob(123, ())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="test_timeout_s"):
        TestJob("", (), test_timeout_s=0)
    with pytest.raises(ValueError, match="cpu_seconds"):
        Limits(cpu_seconds=0)
    with pytest.raises(ValueError, match="backend"):
        Sandbox("docker")  # type: ignore[arg-type]
    assert TestJob("", ["assert 1"]).tests == ("assert 1",)  # type: ignore[arg-type]


def test_close_is_idempotent_and_final() -> None:
    box = make_box("subprocess", workers=1)
    assert box.run(TestJob(GOOD_PROGRAM, GOOD_TESTS)).passed == 3
    box.close()
    box.close()
    with pytest.raises(RuntimeError, match="closed"):
        box.run(TestJob(GOOD_PROGRAM, GOOD_TESTS))


# --- issue 12: attacks found by the red-team pass, one test (or more) per class -------------------------


def deep_tree(depth: int, name: str) -> str:
    """A program that leaves a `depth`-deep directory chain in the private tmp (chdir-based: no path limit)."""
    return f"""
    import os
    def f():
        start = os.getcwd()
        for _ in range({depth}):
            os.mkdir({name!r}, 0o700)
            os.chdir({name!r})
        open("leaf", "w").close()
        os.chmod(".", 0o500)
        os.chdir(start)
        return 0
    """


@pytest.mark.parametrize(("depth", "name"), [(1000, "d"), (120, "n" * 60)])  # deep; deeper than PATH_MAX
def test_deep_trees_in_tmp_are_cleared_and_do_not_poison_later_jobs(box: Sandbox, depth: int, name: str) -> None:
    run_hostile(box, deep_tree(depth, name))
    for _ in range(2):  # every worker of the pool, whichever ran the hostile job
        report = box.run(TestJob("import os\n", ("assert os.listdir('.') == []",)))
        assert report.passed == 1, report
        assert_still_works(box)


def test_a_tmp_that_cannot_be_cleared_retires_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_coop_envs.sandbox import pool

    monkeypatch.setattr(pool, "CLEAN_SECONDS", 0.05)  # workers started from now on give up after 50 ms
    backend = "bwrap" if bwrap_available() else "subprocess"
    with make_box(backend, workers=1, limits=Limits(tmp_inodes=100_000)) as small:
        flood = "import os\ndef f():\n    for i in range(40000):\n        open(str(i), 'w').close()\n    return 0\n"
        assert small.run(TestJob(flood, ("assert f() == 0",), test_timeout_s=20)).passed == 1
        first = worker_pids(small)
        report = small.run(TestJob(GOOD_PROGRAM, GOOD_TESTS))  # its first process cannot clear tmp in time
        assert report.passed == 3 and worker_pids(small) != first  # so it ran again on a fresh worker
        assert small.run(TestJob("import os\n", ("assert len(os.listdir('.')) == 0",))).passed == 1


def test_one_job_is_bounded_in_time_and_deaths_count(box: Sandbox) -> None:
    program = """
    import os, time
    time.sleep(0.8)
    def f():
        time.sleep(0.8)
        os._exit(1)
    """
    tests = ("assert f() == 1",) * 12
    start = time.monotonic()
    report = box.run(TestJob(textwrap.dedent(program), tests, test_timeout_s=1.0, max_timeouts=3))
    elapsed = time.monotonic() - start
    assert report.passed == 0 and {o.status for o in report.outcomes[:2]} == {"error"}  # deaths count
    assert report.outcomes[2].status in ("error", "timeout")  # the third death, or the job's budget ran out
    assert all(o.status == "not_run" for o in report.outcomes[3:])
    assert elapsed < 4.0 + 2.0, elapsed  # budget = test_timeout_s * (max_timeouts + 1)
    slow = TestJob(textwrap.dedent(program), tests, test_timeout_s=1.0, max_timeouts=100, job_timeout_s=2.5)
    start = time.monotonic()
    report = box.run(slow)
    assert time.monotonic() - start < 2.5 + 2.0 and report.passed == 0


SYSCALLS = {
    "keyctl_read_session": "ctypes.CDLL(None, use_errno=True).syscall(250, 0, -3)",  # KEYCTL_GET_KEYRING_ID
    "add_key_user": "ctypes.CDLL(None, use_errno=True).syscall(248, b'user', b'k', b'v', 1, -4)",
    "shmget": "ctypes.CDLL(None, use_errno=True).syscall(29, 0, 1 << 20, 0o1600)",
    "msgget": "ctypes.CDLL(None, use_errno=True).syscall(68, 0, 0o1600)",
    "semget": "ctypes.CDLL(None, use_errno=True).syscall(64, 0, 1, 0o1600)",
    "mq_open": "ctypes.CDLL(None, use_errno=True).syscall(240, b'q', 0o100 | 2, 0o600, 0)",
    "unshare_user": "ctypes.CDLL(None, use_errno=True).unshare(0x10000000)",
    "unshare_ipc": "ctypes.CDLL(None, use_errno=True).unshare(0x08000000)",
    "clone_newuser": "ctypes.CDLL(None, use_errno=True).syscall(56, 0x10000000 | 17, 0, 0, 0, 0)",
}


@pytest.mark.parametrize("name", sorted(SYSCALLS))
def test_keyring_sysv_ipc_and_namespaces_are_denied(box: Sandbox, name: str) -> None:
    program = f"import ctypes\ndef f():\n    return {SYSCALLS[name]}\n"
    report = box.run(TestJob(program, ("assert f() == -1", "import ctypes; assert ctypes.get_errno() == 1")))
    assert report.passed == 2, report  # -1 with EPERM, from the seccomp filter
    pid_left = box.run(TestJob("import os\n", ("assert os.getpid() > 1",)))
    assert pid_left.passed == 1


@pytest.mark.skipif(not bwrap_available(), reason="needs bubblewrap (the subprocess backend shares /dev/shm)")
def test_shared_memory_does_not_outlive_a_job() -> None:
    box = make_box("bwrap", workers=1)
    make = "import mmap, os\ndef f():\n    fd = os.open('/dev/shm/x', os.O_CREAT | os.O_RDWR)\n    os.write(fd, b'hi')\n    return 1\n"
    box.run(TestJob(make, ("assert f() == 1",)))
    with box:
        report = box.run(TestJob("import os\n", ("assert not os.path.exists('/dev/shm/x')",) * 2))
    assert report.passed == 2


@pytest.mark.skipif(not bwrap_available(), reason="needs bubblewrap")
def test_memory_of_a_process_tree_is_bounded() -> None:
    limits = Limits(memory_bytes=256 << 20, max_processes=4)
    program = """
    import os, time
    def f():
        kids = 0
        for _ in range(6):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                block = bytearray(200 << 20)
                time.sleep(3)
                os._exit(0)
            kids += 1
        return kids
    """
    with make_box("bwrap", limits=limits, workers=1) as small:
        report = small.run(TestJob(textwrap.dedent(program), ("assert f() <= 3",), test_timeout_s=5))
        assert report.passed == 1, report  # at most max_processes * memory_bytes in the whole tree
        assert limits.job_memory_bound == 1 << 30


@pytest.mark.skipif(not bwrap_available(), reason="needs bubblewrap")
def test_one_jobs_forks_do_not_starve_a_concurrent_job() -> None:
    hog = "import os, time\ndef f():\n    n = 0\n    while True:\n        try:\n            if os.fork() == 0:\n                time.sleep(4)\n                os._exit(0)\n            n += 1\n        except OSError:\n            time.sleep(2)\n            return n\n"
    fair = "import os, time\ndef f():\n    time.sleep(0.5)\n    pids = [os.fork() for _ in range(3)]\n    if 0 in pids:\n        os._exit(0)\n    return len(pids)\n"
    with make_box("bwrap", limits=Limits(max_processes=8), workers=2, cache_size=0) as two:
        hogged, other = two.run_batch([TestJob(hog, ("assert f() == 7",)), TestJob(fair, ("assert f() == 3",))])
        assert hogged.passed == 1 and other.passed == 1, (hogged, other)


def test_subprocess_backend_refuses_to_run_model_code_as_root() -> None:
    from llm_coop_envs.sandbox import SandboxError, pool

    if os.geteuid() != 0 or pool.subprocess_drops_privileges():
        pytest.skip("only when the subprocess backend would run model code as root")
    with pytest.raises(SandboxError, match="allow_unsafe_root"):
        Sandbox("subprocess")
    with Sandbox("subprocess", workers=1, allow_unsafe_root=True) as unsafe:
        assert unsafe.run(TestJob(GOOD_PROGRAM, GOOD_TESTS)).passed == 3


def test_the_program_process_never_holds_expected_values(box: Sandbox) -> None:
    program = """
    import gc, sys
    def found():
        marker = "".join(["MARK", "ER-7f3a"])  # not a constant of this code
        for obj in gc.get_objects():
            for text in (obj if type(obj) in (list, tuple) else obj.values() if type(obj) is dict else ()):
                if type(text) in (str, bytes) and marker in (text if type(text) is str else text.decode("latin-1")):
                    return 1
        frame = sys._getframe().f_back
        while frame is not None:
            if any(marker in repr(v) for v in frame.f_locals.values()):
                return 1
            frame = frame.f_back
        return 0
    def g():
        return "wrong"
    """
    tests = ("assert found() == 0", "assert g() == 'MARKER-7f3a'")
    report = box.run(TestJob(textwrap.dedent(program), tests, call_names=("found", "g")))
    assert [o.status for o in report.outcomes] == ["passed", "failed"], report
    assert report.tests_unsplit == 0


def test_setsid_grandchildren_die_even_when_the_server_is_killed(box: Sandbox) -> None:
    marker = f"llm-coop-setsid-{os.getpid()}-{box.backend}"
    program = f"""
    import os, signal, time
    def f():
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execvp("sleep", ["sleep", "30", "{marker}"])
            os._exit(0)
        time.sleep(0.3)
        os.kill(os.getppid(), signal.SIGKILL)  # the server (bwrap: pid 1 of the sandbox, which ignores it)
        return 1
    """

    def alive() -> int:
        found = 0
        for pid in os.listdir("/proc"):
            try:
                found += marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
        return found

    run_hostile(box, program, ("assert f() == 2",), timeout=3)
    deadline = time.monotonic() + 5
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive() == 0


@pytest.mark.skipif(not bwrap_available() or os.geteuid() != 0, reason="inode limit: bubblewrap run as root only")
def test_the_private_tmp_has_an_inode_limit() -> None:
    program = """
    import os
    def flood():
        made = 0
        try:
            while True:
                open(str(made), "w").close()
                made += 1
        except OSError as error:
            return made, error.errno
    """
    with make_box("bwrap", workers=1, limits=Limits(tmp_inodes=500)) as small:
        tests = ("assert flood()[0] < 500", "assert flood()[1] == 28")  # ENOSPC
        report = small.run(TestJob(textwrap.dedent(program), tests, call_names=("flood",)))
        assert report.passed == 2, report
        assert_still_works(small)


@pytest.mark.skipif(not bwrap_available() or os.geteuid() != 0, reason="privileged bubblewrap only")
def test_capabilities_uids_and_seccomp_of_the_sandbox_processes() -> None:
    def status(pid: int) -> dict[str, str]:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        return dict(line.split(":\t", 1) for line in lines if ":\t" in line)

    with make_box("bwrap", workers=1, cache_size=0) as small:
        small.run(TestJob("x = 1\n", ("assert x == 1",)))
        bwrap_pid = worker_pids(small)[0]
        server = next(p for p in descendants() if status(p).get("PPid") == str(bwrap_pid))
        waiting = next(p for p in descendants() if status(p).get("PPid") == str(server))  # forked for the next job
        assert int(status(server)["CapEff"], 16) == (1 << 5) | (1 << 6) | (1 << 7)  # KILL, SETGID, SETUID only
        child = status(waiting)
        assert int(child["CapEff"], 16) == 0 and child["Seccomp"] == "2" and child["NoNewPrivs"] == "1"
        assert child["Uid"].split()[0] not in ("0", "65534")  # a uid of this worker's own


# --- the two-process judge: how asserts are split ----------------------------------------------------------


@pytest.mark.parametrize(
    ("test", "calls", "verdict"),
    [
        ("assert f(1) == 2", ["f(1)"], "assert __llm_coop_v__(0) == 2"),
        (
            "x = [1]\ny = 2\nassert abs(f(x) - y) < 1e-6",
            ["f(x)"],
            "x = [1]\ny = 2\nassert abs(__llm_coop_v__(0) - y) < 1e-6",
        ),
        ("assert f(f(2)) == aux(3) and f(\n  [1]) == [2]", ["f(f(2))", "aux(3)", "f(\n  [1])"], None),
        ("assert f('é') == 'é', 'message'", ["f('é')"], "assert __llm_coop_v__(0) == 'é', 'message'"),
    ],
)
def test_asserts_are_split_into_calls_and_a_verdict(test: str, calls: list[str], verdict: str | None) -> None:
    from llm_coop_envs.sandbox.judge import split_test

    split = split_test(test, ("f", "aux"))
    assert split is not None and split.calls["calls"] == calls
    assert verdict is None or split.verdict == verdict
    assert "2" not in split.calls["setup"]  # only what the arguments need: y = 2 stays with the judge


@pytest.mark.parametrize(
    "test",
    ["assert all(f(x) for x in [1])", "assert f is not None", "assert list(map(f, [1])) == [2]", "assert (y := f(1))"],
)
def test_unsplittable_asserts_run_in_process_and_are_counted(box: Sandbox, test: str) -> None:
    from llm_coop_envs.sandbox.judge import split_test

    assert split_test(test, ("f",)) is None
    report = box.run(TestJob("def f(x=1):\n    return x\n", (test, "assert f(2) == 2"), call_names=("f",)))
    assert report.tests_unsplit == 1 and report.outcomes[1].status == "passed"


def test_judged_calls_that_raise_report_the_exception_type(box: Sandbox) -> None:
    program = (
        "class Oops(Exception):\n    pass\ndef f(x):\n    if x == 2:\n        raise Oops('no')\n    return 1 // x\n"
    )
    tests = ("assert f(1) == 1", "assert f(0) == 0", "assert f(2) == 0", "assert f(1) == 1 or f(0)", "assert f(0) or 1")
    report = box.run(TestJob(program, tests, call_names=("f",)))
    statuses = [(o.status, o.error_type) for o in report.outcomes]
    assert statuses[:3] == [("passed", None), ("error", "ZeroDivisionError"), ("error", "Oops")]
    assert statuses[3] == ("passed", None)  # f(0) ran too (calls are evaluated first), but its error is unused
    assert statuses[4] == ("error", "ZeroDivisionError") and report.tests_unsplit == 0
