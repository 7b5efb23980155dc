"""RaySandbox (llm_coop_envs/sandbox/ray_pool.py): the same reports as the local Sandbox, from Ray actors.

One module-scoped local Ray (2 CPUs, no dashboard) serves every test; a test that needs Ray is skipped when
ray is not installed. The missing-ray error and the shutdown rule are checked without Ray.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llm_coop_envs import make
from llm_coop_envs.sandbox import JobReport, Limits, Sandbox, SandboxError, TestJob, bwrap_available, ray_pool

pytestmark = pytest.mark.ray

BACKEND = "bwrap" if bwrap_available() else "subprocess"
SMALL = Limits(cpu_seconds=5.0, memory_bytes=512 << 20, max_processes=8, tmp_bytes=8 << 20)
PROJECT = Path(__file__).resolve().parents[2]
needs_bwrap = pytest.mark.skipif(not bwrap_available(), reason="needs bubblewrap")


def job(program: str, *tests: str, timeout: float = 2.0) -> TestJob:
    return TestJob(textwrap.dedent(program), tests, timeout, 1, call_names=("f",))


# pass, fail, infinite loop, crash in a test, error while loading, exit while loading
JOBS = {
    "pass": job("def f(x):\n    return 2 * x\n", "assert f(2) == 4", "assert f(0) == 0"),
    "fail": job("def f(x):\n    return x\n", "assert f(2) == 4", "assert f(0) == 0"),
    "loop": job("def f():\n    while True:\n        pass\n", "assert f() == 1", "assert f() == 2", timeout=1.0),
    "crash": job("def f():\n    import os\n    os.kill(os.getpid(), 9)\n", "assert f() == 1", "assert 1 == 1"),
    "load error": job("def f():\n    return 1\n\nundefined_name\n", "assert f() == 1"),
    "exit at load": job("import os\nos._exit(3)\n\ndef f():\n    return 1\n", "assert f() == 1"),
}


def fields(report: JobReport) -> tuple[Any, ...]:
    """What must agree between backends: everything but the backend name, the cache flag and timings."""
    return (
        report.program_status,
        report.program_error,
        report.passed,
        report.total,
        tuple((o.status, o.error_type) for o in report.outcomes),
        report.tests_unsplit,
    )


def new_box(**kwargs: Any) -> ray_pool.RaySandbox:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return ray_pool.RaySandbox(backend=BACKEND, limits=SMALL, allow_unsafe_root=True, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ray_module() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray_pool._close_shared()
    ray.shutdown()


@pytest.fixture(scope="module")
def box(ray_module: Any) -> Iterator[ray_pool.RaySandbox]:
    sandbox = new_box(actors=2)
    yield sandbox
    sandbox.close()
    assert ray_module.is_initialized(), "RaySandbox must never shut down a Ray it did not start"


@pytest.fixture(scope="module")
def local() -> Iterator[Sandbox]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sandbox = Sandbox(BACKEND, SMALL, workers=2, allow_unsafe_root=True)  # type: ignore[arg-type]
    yield sandbox
    sandbox.close()


def test_surface(box: ray_pool.RaySandbox, local: Sandbox) -> None:
    assert box.backend == f"ray+{BACKEND}" and box.actors == 2 and box.workers == 2 and box.limits == SMALL
    assert box.protects_host_files == local.protects_host_files


def test_same_reports_as_the_local_sandbox(box: ray_pool.RaySandbox, local: Sandbox) -> None:
    jobs = list(JOBS.values())
    expected = local.run_batch(jobs)
    start = time.monotonic()
    got = box.run_batch(jobs)
    elapsed = time.monotonic() - start
    for name, want, have in zip(JOBS, expected, got, strict=True):
        assert fields(have) == fields(want), name
        assert have.backend == f"ray+{want.backend}" and not have.cached, name
    by_name = dict(zip(JOBS, got, strict=True))
    assert by_name["pass"].passed == 2 and by_name["fail"].passed == 1
    loop = by_name["loop"]
    assert [o.status for o in loop.outcomes] == ["timeout", "not_run"] and loop.timeouts == 1
    assert by_name["crash"].outcomes[0].status != "passed"
    assert by_name["load error"].program_status == "error" and by_name["exit at load"].passed == 0
    # the documented bound of one job (program phase + verdicts), measured on the whole concurrent batch
    assert elapsed < 2 * (JOBS["loop"].budget_s + 15), elapsed


def test_timeout_alone_is_bounded(box: ray_pool.RaySandbox) -> None:
    loop = job("def f():\n    while True:\n        x = 1\n", "assert f() == 1", timeout=1.0)
    start = time.monotonic()
    report = box.run(loop)
    elapsed = time.monotonic() - start
    assert report.outcomes[0].status == "timeout" and report.outcomes[0].error_type == "Timeout"
    assert 1.0 <= elapsed < loop.budget_s + 15, elapsed


def test_run_batch_order_duplicates_and_cache(box: ray_pool.RaySandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    made = [job(f"def f():\n    return {i}\n", "assert f() == 1", "assert f() == 2") for i in range(3)]
    runs: list[str] = []
    real_run = box._fleet.run

    def counting(key: str, one: TestJob) -> tuple[JobReport, bool]:
        runs.append(one.program)
        return real_run(key, one)

    monkeypatch.setattr(box._fleet, "run", counting)
    batch = [made[0], made[1], made[0], made[2], made[1]]
    out = box.run_batch(batch)
    assert [r.passed for r in out] == [0, 1, 0, 1, 1]
    assert [r.cached for r in out] == [False, False, True, False, True]
    assert sorted(runs) == sorted(j.program for j in made)  # each distinct job ran once
    again = box.run(made[2])
    assert again.cached and fields(again) == fields(out[3]) and len(runs) == 3
    assert box.run_batch([]) == []
    with pytest.raises(TypeError):
        box.run_batch(["not a job"])  # type: ignore[list-item]


def test_killed_actor_is_replaced_and_a_second_failure_names_the_job(
    ray_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with new_box(actors=1, cache_size=0) as solo:
        dead = solo._fleet.handles[0]
        ray_module.kill(dead, no_restart=True)
        report = solo.run(JOBS["pass"])  # the job reached the dead actor, was rerun on its replacement
        assert report.passed == 2 and solo._fleet.handles[0] is not dead
        assert solo.backend == f"ray+{BACKEND}"
        monkeypatch.setattr(ray_pool, "_host_timeout_s", lambda one: 0.001)  # every attempt "hangs"
        with pytest.raises(SandboxError, match=r"job [0-9a-f]{12} \(program starting 'def f\(x\):'"):
            solo.run(JOBS["fail"])
    assert solo.closed and ray_module.is_initialized()
    with pytest.raises(SandboxError, match="closed"):
        solo.run(JOBS["pass"])


@needs_bwrap
def test_model_code_in_an_actor_is_inside_bubblewrap(box: ray_pool.RaySandbox, ray_module: Any) -> None:
    host, port = ray_module.get_runtime_context().gcs_address.rsplit(":", 1)
    probe = f"""
        def f():
            import os, socket
            seen = []
            for host, port in [({host!r}, {port}), ("127.0.0.1", {port})]:
                s = socket.socket()
                s.settimeout(1)
                try:
                    s.connect((host, port))
                    seen.append(host)
                except OSError:
                    pass
                finally:
                    s.close()
            home = {os.path.expanduser("~")!r}
            seen += [p for p in ("/tmp/ray", home + "/.ray", "/proc/1/environ", {str(PROJECT)!r}) if os.path.exists(p)]
            seen += [k for k in os.environ if k.startswith("RAY")]
            return seen
        """
    report = box.run(job(probe, "assert f() == []", timeout=5.0))
    assert report.backend == "ray+bwrap"
    assert report.passed == 1, report.outcomes[0].message
    # the same probe on the host finds Ray, so a pass above means isolation, not a broken probe
    with socket.create_connection((host, int(port)), timeout=2):
        pass
    assert os.path.exists("/tmp/ray")


def coding_items(env: Any) -> list[tuple[Any, dict[str, str]]]:
    """Reference pairs, a wrong main and a syntax error on three bundled tasks, and one endless main."""
    tasks = [env.tasks.get(task_id) for task_id in env.task_ids()[:3]]
    items = []
    for t in tasks:
        aux, name = t.fields["reference_aux"], t.fields["entry_point"]
        items += [
            (t, {"helper": aux, "main": t.fields["reference_main"]}),
            (t, {"helper": aux, "main": f"def {name}(*args):\n    return None"}),
            (t, {"helper": "def aux(x):\n    return (x", "main": t.fields["reference_main"]}),
        ]
    endless = f"def {tasks[0].fields['entry_point']}(*args):\n    while True:\n        pass\n    return 0"
    return [*items, (tasks[0], {"helper": "", "main": endless})]


def test_coding_env_with_ray_scores_like_the_local_sandbox(box: ray_pool.RaySandbox, local: Sandbox) -> None:
    ray_arg: Any = "ray" if bwrap_available() else box  # "ray" means bwrap; without it, pass the instance
    on_ray = make("coop_coding-v0", sandbox=ray_arg, test_timeout_s=1.0, max_timeouts=1)
    on_host = make("coop_coding-v0", sandbox=BACKEND, test_timeout_s=1.0, max_timeouts=1)
    items = coding_items(on_host)
    want, got = on_host.score_many(items), on_ray.score_many(items)
    for want_score, got_score in zip(want, got, strict=True):
        assert got_score.joint == want_score.joint and got_score.individual == want_score.individual
        assert got_score.solved == want_score.solved
        assert got_score.breakdown["sandbox_backend"] == f"ray+{BACKEND}"
        strip = lambda b: {k: v for k, v in b.items() if k != "sandbox_backend"}  # noqa: E731
        assert strip(got_score.breakdown) == strip(want_score.breakdown)
    assert any(s.solved for s in got) and any(s.breakdown["tests_timed_out"] for s in got)
    if bwrap_available():
        assert on_ray.sandbox is ray_pool.shared_ray_sandbox() and on_ray.sandbox.backend == "ray+bwrap"


def test_coding_env_rejects_unknown_sandboxes() -> None:
    with pytest.raises(ValueError, match="'ray'"):
        make("coop_coding-v0", sandbox="rays")


def test_missing_ray_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.setattr(ray_pool, "_shared", {})  # no shared RaySandbox from an earlier test
    with pytest.raises(ImportError) as caught:
        ray_pool.RaySandbox()
    assert 'pip install "llm-coop-envs[ray]"' in str(caught.value) and "pip install ray" in str(caught.value)
    with pytest.raises(ImportError, match=r"llm-coop-envs\[ray\]"):
        make("coop_coding-v0", sandbox="ray")


def test_importing_the_package_never_imports_ray() -> None:
    code = (
        "import sys, llm_coop_envs\n"
        "from llm_coop_envs import make\n"
        "from llm_coop_envs.sandbox import RaySandbox\n"
        "make('coop_coding-v0')\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PROJECT, timeout=60)


class FakeRay:
    """Just enough of ``ray`` for the shutdown rule."""

    def __init__(self, initialized: bool) -> None:
        self.initialized, self.inits, self.shutdowns = initialized, 0, 0

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, address: str | None = None) -> None:
        self.initialized, self.inits = True, self.inits + 1

    def shutdown(self) -> None:
        self.initialized, self.shutdowns = False, self.shutdowns + 1


def test_ray_is_shut_down_only_when_this_module_started_it() -> None:
    users_ray = FakeRay(initialized=True)
    session = ray_pool._RaySession()
    assert session.acquire(users_ray, None) is False and users_ray.inits == 0  # nothing to release
    ours = FakeRay(initialized=False)
    assert session.acquire(ours, "auto") and session.acquire(ours, None) and ours.inits == 1
    session.release(ours)
    assert ours.shutdowns == 0  # another RaySandbox still uses it
    session.release(ours)
    assert ours.shutdowns == 1 and not ours.initialized
