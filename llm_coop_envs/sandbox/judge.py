"""The two-process judge: model code and the expected values never share a process.

For a :class:`~llm_coop_envs.sandbox.jobs.TestJob` with ``call_names`` (the coding env passes the entry point
and ``aux``), each test ``setup...; assert EXPR`` is split on its syntax tree (here, on the host; nothing is
executed here):

1. **Calls** (sent to the sandboxed program's process, one test at a time, after the program loaded): the
   outermost calls ``f(args)`` of the named functions in ``EXPR``, in source order, plus only the setup
   statements their arguments need. No expected value, no other test and no assert is ever sent there. The
   process evaluates the calls (stopping at the first exception) and returns each result as plain data:
   exact types only (``type(x) is int``; None, bool, int, float, complex, str, bytes, list, tuple, dict,
   set, frozenset, nested, bounded in size and depth). Anything else (a subclass of int, an object with an
   always-true ``__eq__``, a generator, ...) is recorded as unsupported and the test fails.
2. **Verdict** (a separate sandbox worker that never runs model code): ``judge_prelude`` (the task's imports),
   the setup, then ``EXPR`` with each call replaced by the decoded value (or by re-raising what the call
   raised, as the builtin exception of that name). Its pass/fail/error is the test's outcome.

So whatever the program does to its own process (rewrite the harness, walk frames, scan the heap, forge
frames), the most it can report is some plain value per call, which is exactly what returning that value
would do. Tests that cannot be split this way (the name used other than as a call, a call inside a lambda or
comprehension, an assignment expression, setup that mentions the names, ...) run as before inside the
program's process and are counted in :attr:`JobReport.tests_unsplit`.

Remaining differences from running the assert in-process (the limits of this design):
  * the calls of one assert are all evaluated, left to right, before the assert: a call the original would
    have skipped by short-circuit (``a or f(x)``) still runs (its value is unused);
  * a test whose expression inspects a value's identity or mutation *after* the call (``f(lst) ...
    lst``) sees the judge's own copy of the setup, not the program's mutated one;
  * results must be plain data: a correct function returning, say, a custom class or a numpy array fails.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass, replace
from typing import Any

from llm_coop_envs.sandbox import server
from llm_coop_envs.sandbox.jobs import JobReport, TestJob, TestOutcome
from llm_coop_envs.sandbox.pool import RawReport, WireJob

__all__ = ["SplitTest", "judge_job", "merge", "plan", "split_test"]

_VALUE = server.VALUES_NAME
_SCOPES = (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.NamedExpr)


@dataclass(frozen=True)
class SplitTest:
    """One test in its two halves."""

    calls: dict[str, Any]  # {"setup": the setup statements the arguments need, "calls": [call source, ...]}
    verdict: str  # the setup, then the assert with call i replaced by __llm_coop_v__(i)


def _is_target(node: ast.AST, names: frozenset[str]) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names


def _outer_calls(test: ast.Assert, names: frozenset[str]) -> list[ast.Call] | None:
    """The outermost calls of `names` in the assert, or None when the assert has an unsplittable shape."""
    calls: list[ast.Call] = []
    stack: list[tuple[ast.AST, bool]] = [(test, False)]
    while stack:
        node, scoped = stack.pop()
        if _is_target(node, names):
            if scoped:
                return None
            assert isinstance(node, ast.Call)
            calls.append(node)
            continue
        if isinstance(node, ast.Name) and node.id in names:
            return None  # the function itself used as a value
        if isinstance(node, ast.NamedExpr):
            return None
        inner = scoped or isinstance(node, _SCOPES)
        stack.extend((child, inner) for child in ast.iter_child_nodes(node))
    return sorted(calls, key=lambda c: (c.lineno, c.col_offset)) or None


def _loaded(nodes: list[ast.AST]) -> set[str]:
    return {n.id for root in nodes for n in ast.walk(root) if isinstance(n, ast.Name)}


def _defined(statement: ast.stmt) -> set[str]:
    names = {n.id for n in ast.walk(statement) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    if isinstance(statement, (ast.Import, ast.ImportFrom)):
        names |= {(a.asname or a.name).split(".")[0] for a in statement.names}
    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        names.add(statement.name)
    return names


def _needed_setup(setup: list[ast.stmt], calls: list[ast.Call]) -> list[ast.stmt]:
    """The setup statements the calls' arguments depend on (transitively), in their original order."""
    needed = _loaded(list(calls))
    keep: list[ast.stmt] = []
    for statement in reversed(setup):
        if _defined(statement) & needed:
            keep.append(statement)
            needed |= _loaded([statement])
    return keep[::-1]


def _offsets(source: str) -> list[int]:
    """Byte offset (UTF-8, as in ``ast`` positions) of the start of each line."""
    starts, total = [0], 0
    for line in source.encode("utf-8", "surrogatepass").splitlines(keepends=True):
        total += len(line)
        starts.append(total)
    return starts


def _span(node: ast.AST, starts: list[int]) -> tuple[int, int]:
    start = starts[node.lineno - 1] + node.col_offset  # type: ignore[attr-defined]
    return start, starts[(node.end_lineno or 1) - 1] + (node.end_col_offset or 0)  # type: ignore[attr-defined]


def _verdict_source(data: bytes, starts: list[int], test: ast.Assert, calls: list[ast.Call]) -> str:
    """The text up to the assert's end with call i replaced by ``__llm_coop_v__(i)`` (same line numbers)."""
    out = data[: _span(test, starts)[1]]
    for i, call in reversed(list(enumerate(calls))):
        begin, end = _span(call, starts)
        out = out[:begin] + f"{_VALUE}({i})".encode() + out[end:]
    return out.decode("utf-8", "surrogatepass")


@functools.lru_cache(maxsize=8192)
def split_test(source: str, names: tuple[str, ...]) -> SplitTest | None:
    """Split one test (setup statements, then one assert), or None when its shape does not allow it.

    Text is cut at syntax-tree positions (no unparsing), so line numbers and spelling are the test's own."""
    wanted = frozenset(names)
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if not tree.body or not isinstance(tree.body[-1], ast.Assert):
        return None
    setup, test = list(tree.body[:-1]), tree.body[-1]
    if _loaded(list(setup)) & wanted:
        return None
    calls = _outer_calls(test, wanted)
    if calls is None:
        return None
    data, starts = source.encode("utf-8", "surrogatepass"), _offsets(source)

    def text(node: ast.AST) -> str:
        begin, end = _span(node, starts)
        return data[begin:end].decode("utf-8", "surrogatepass")

    needed = "\n".join(text(s) for s in _needed_setup(setup, calls))
    return SplitTest({"setup": needed, "calls": [text(c) for c in calls]}, _verdict_source(data, starts, test, calls))


def plan(job: TestJob) -> tuple[WireJob, tuple[SplitTest | None, ...]]:
    """The first (untrusted) phase of `job` and the split form of each of its tests (None: in-process)."""
    splits = tuple(split_test(t, job.call_names) if job.call_names else None for t in job.tests)
    payloads = tuple({"a": t} if s is None else {"c": s.calls} for t, s in zip(job.tests, splits, strict=True))
    wire = WireJob(job.program, payloads, job.test_timeout_s, job.max_timeouts, job.budget_s)
    return wire, splits


def _unsupported(records: list[tuple[str, Any]]) -> TestOutcome | None:
    bad = next((data for kind, data in records if kind == "bad"), None)
    return None if bad is None else TestOutcome("failed", "UnsupportedResult", bad[1])


def judge_job(
    job: TestJob, splits: tuple[SplitTest | None, ...], raw: RawReport
) -> tuple[WireJob | None, dict[int, int], dict[int, TestOutcome]]:
    """The verdict phase: (its job or None, test index -> verdict index, outcomes decided without it)."""
    tests: list[dict[str, Any]] = []
    where: dict[int, int] = {}
    decided: dict[int, TestOutcome] = {}
    for i, (split, value) in enumerate(zip(splits, raw.values, strict=True)):
        if split is None or value is None:
            continue
        try:
            records = server.decode_results(value, len(split.calls["calls"]))
        except (ValueError, RecursionError, MemoryError, OverflowError):
            decided[i] = TestOutcome("error", "ProtocolViolation", "malformed call results from the program")
            continue
        bad = _unsupported(records)
        if bad is not None:
            decided[i] = bad
            continue
        where[i] = len(tests)
        tests.append({"a": split.verdict, "v": value, "p": job.judge_prelude})
    if not tests:
        return None, where, decided
    wire = WireJob("", tuple(tests), job.test_timeout_s, job.max_timeouts, job.budget_s)
    return wire, where, decided


def merge(
    raw: RawReport, splits: tuple[SplitTest | None, ...], verdicts: JobReport | None, where: dict[int, int],
    decided: dict[int, TestOutcome],
) -> JobReport:  # fmt: skip
    """The final report: untrusted outcomes for in-process tests and failures, verdicts for the rest."""
    outcomes = list(raw.report.outcomes)
    for i, outcome in decided.items():
        outcomes[i] = replace(outcome, output=outcomes[i].output)
    for i, j in where.items():
        verdict = verdicts.outcomes[j] if verdicts is not None else TestOutcome("error", "JudgeFailed", "no verdict")
        if verdicts is not None and verdicts.program_status != "ok":
            verdict = TestOutcome("error", "JudgeFailed", f"the judge could not start: {verdicts.program_error}")
        outcomes[i] = replace(verdict, output=outcomes[i].output)
    unsplit = sum(split is None for split in splits)
    return replace(raw.report, outcomes=tuple(outcomes), tests_unsplit=unsplit)
