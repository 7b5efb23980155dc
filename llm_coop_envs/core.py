"""The cooperative parallel environment core shared by every task family.

A task family (``writing.py``, ``coding.py``) subclasses :class:`CoopParallelEnv` and supplies four
things: the role names, the instructions for each role, the first message of a task and a scoring
function (plus, for multi-turn play, a feedback message). Everything else lives here: PettingZoo
bookkeeping, spaces, seeding, task selection, input validation, turn limits, reward modes and branching.

Contract (see ``docs/architecture.md``, Contracts):

* ``possible_agents`` are role names in the paper's order; agents act simultaneously; the episode ends
  for all agents at once and ``agents`` becomes empty.
* Observation of each agent: ``{"prompt": str}``, the raw prompt text (no chat template). The same
  prompt in chat form is ``infos[agent]["messages"]`` (a list of ``{"role", "content"}`` dicts with a
  ``system`` message holding the role instructions), for policies that apply a chat template.
  ``infos[agent]["answer_start"]`` is the text the agent's answer should begin with ("" unless the env is
  asked for one, e.g. the coding env's ``answer_start=True``), for policies that continue it.
* Action: one string, at most ``max_action_chars`` characters.
* ``reward_mode="joint"`` (default): every agent receives the joint reward. ``"independent"``: each
  agent receives its own individual reward (defined per task family). After every step
  ``infos[agent]`` holds ``joint_reward``, ``individual_reward``, ``breakdown`` and ``solved``.
* Termination: the task is solved (or failed by a task rule). Truncation: ``max_turns`` reached.
* ``reset(seed)`` seeds a per-instance generator (never the global one); ``options`` selects a task:
  ``{"task_id": ...}`` (any split), ``{"split": ..., "index": ...}``, or ``{"split": ...}`` (random task
  of that split). Without options a random task of the env's ``split`` is drawn. Unknown option keys
  are ignored with a warning (PettingZoo's own API test passes arbitrary options).
* ``clone()`` returns an exact, independent copy of the current state (for GRPO groups and tree
  rollouts); tasks, spaces and other immutable parts are shared, so cloning is cheap.
* Bad input raises ``TypeError``/``ValueError`` naming the problem before any state changes.
"""

from __future__ import annotations

import copy
import functools
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

__all__ = [
    "MAX_PROMPT_CHARS",
    "CoopParallelEnv",
    "Message",
    "RewardMode",
    "Score",
    "Task",
    "TaskSet",
    "Turn",
    "UnicodeText",
    "make_aec",
]

Message = dict[str, str]
RewardMode = Literal["joint", "independent"]
MAX_PROMPT_CHARS = 1_000_000
"""Upper bound of the observation ``Text`` space (prompts grow with multi-turn history)."""

_SAMPLING_ALPHABET = "\n\t" + "".join(chr(c) for c in range(0x20, 0x7F)) + "àéèêëïîôöüçñßÀÉÖÜ–—‘’“”…€£°"


class UnicodeText(spaces.Text):
    """A ``Text`` space whose members are ANY Unicode text of bounded length.

    Gymnasium's ``Text`` checks membership against an explicit character set; model output and real
    prompts contain code, whitespace, accents and emoji, so this space's character set is every Unicode
    scalar value (lone surrogates excluded). ``sample()`` draws from a printable sampling alphabet
    (``character_set``: ASCII, tab, newline and common typographic characters).
    """

    def __init__(self, max_length: int, min_length: int = 0) -> None:
        super().__init__(max_length=max_length, min_length=min_length, charset=_SAMPLING_ALPHABET)

    def contains(self, x: Any) -> bool:
        if not isinstance(x, str) or not self.min_length <= len(x) <= self.max_length:
            return False
        try:
            x.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate is not a Unicode scalar value
            return False
        return True

    def __repr__(self) -> str:
        return f"UnicodeText({self.min_length}, {self.max_length})"


@dataclass(frozen=True)
class Task:
    """One problem instance: an id, the split it belongs to and family-specific fields."""

    task_id: str
    split: str
    fields: Mapping[str, Any]


@dataclass(frozen=True)
class Score:
    """What a task family's scorer returns for one joint action."""

    joint: float
    individual: Mapping[str, float]
    breakdown: Mapping[str, Any]
    solved: bool = False
    failed: bool = False


@dataclass(frozen=True)
class Turn:
    """One completed turn: what each agent was shown, what it answered, and the score."""

    messages: Mapping[str, tuple[Message, ...]]
    actions: Mapping[str, str]
    score: Score


class TaskSet:
    """An immutable, ordered collection of tasks indexed by id and by split."""

    def __init__(self, name: str, tasks: Sequence[Task]) -> None:
        if not tasks:
            raise ValueError(f"dataset {name!r} holds no tasks")
        self.name = name
        self._tasks = tuple(tasks)
        self._by_id: dict[str, Task] = {}
        self._by_split: dict[str, list[Task]] = {}
        for task in self._tasks:
            if task.task_id in self._by_id:
                raise ValueError(f"dataset {name!r} has the task id {task.task_id!r} twice")
            self._by_id[task.task_id] = task
            self._by_split.setdefault(task.split, []).append(task)

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self._by_split)

    def ids(self, split: str | None = None) -> list[str]:
        tasks = self._tasks if split is None else self.split_tasks(split)
        return [task.task_id for task in tasks]

    def split_tasks(self, split: str) -> Sequence[Task]:
        if split not in self._by_split:
            raise ValueError(f"unknown split {split!r} in dataset {self.name!r}; splits: {', '.join(self.splits)}")
        return self._by_split[split]

    def get(self, task_id: str) -> Task:
        if task_id not in self._by_id:
            examples = ", ".join(list(self._by_id)[:5])
            raise ValueError(
                f"unknown task id {task_id!r} in dataset {self.name!r} ({len(self)} tasks, e.g. {examples})"
            )
        return self._by_id[task_id]


@dataclass
class _EpisodeState:
    task: Task | None = None
    turn: int = 0
    history: tuple[Turn, ...] = ()
    messages: dict[str, tuple[Message, ...]] = field(default_factory=dict)
    last_infos: dict[str, dict[str, Any]] = field(default_factory=dict)


class CoopParallelEnv(ParallelEnv[str, dict[str, str], str]):
    """Base class of every cooperative environment of the suite (see the module docstring)."""

    roles: ClassVar[tuple[str, ...]] = ()
    metadata: ClassVar[dict[str, Any]] = {
        "name": "coop_env",
        "render_modes": ["ansi", "human"],
        "is_parallelizable": True,
    }

    def __init__(
        self,
        tasks: TaskSet,
        *,
        max_turns: int = 1,
        reward_mode: RewardMode = "joint",
        split: str = "train",
        render_mode: str | None = None,
        max_action_chars: int = 16_384,
    ) -> None:
        _check_arguments(max_turns, reward_mode, render_mode, max_action_chars, self.metadata["render_modes"])
        tasks.split_tasks(split)  # validates the split name
        self.tasks = tasks
        self.max_turns = max_turns
        self.reward_mode: RewardMode = reward_mode
        self.split = split
        self.render_mode = render_mode
        self.max_action_chars = max_action_chars
        self.possible_agents = list(self.roles)
        self.agents: list[str] = []
        self._observation_spaces = {a: spaces.Dict({"prompt": UnicodeText(MAX_PROMPT_CHARS)}) for a in self.roles}
        self._action_spaces = {a: UnicodeText(max_action_chars) for a in self.roles}
        self._rng = np.random.default_rng()
        self._state = _EpisodeState()
        self._closed = False

    # ----- hooks a task family implements -------------------------------------------------------------
    def role_instructions(self, agent: str) -> str:
        """The standing instructions of ``agent`` (the system message in chat form)."""
        raise NotImplementedError

    def task_message(self, task: Task, agent: str) -> str:
        """The first user message of ``task`` for ``agent``."""
        raise NotImplementedError

    def score(self, task: Task, actions: Mapping[str, str]) -> Score:
        """Score one joint action (pure: no env state is read or written)."""
        raise NotImplementedError

    def feedback_message(self, task: Task, agent: str, history: tuple[Turn, ...]) -> str:
        """The user message that opens turn ``len(history)`` for ``agent`` (multi-turn only)."""
        raise NotImplementedError(f"{type(self).__name__} has no multi-turn feedback")

    def render_prompt(self, messages: Sequence[Message]) -> str:
        """Raw prompt text of a chat transcript: the contents joined by blank lines."""
        return "\n\n".join(message["content"] for message in messages)

    def score_many(self, items: Sequence[tuple[Task, Mapping[str, str]]]) -> list[Score]:
        """Score many joint actions (a GRPO group, an eval split); envs that run code batch them."""
        return [self.score(task, actions) for task, actions in items]

    # ----- hooks of the untrained protocols and the single-model view (task knowledge, not learning) ------
    single_instructions: ClassVar[str | None] = None
    """Instructions for ONE model that writes every agent's part (the single-model baseline)."""
    single_cue: ClassVar[str | None] = None
    """The cue that ends the single-model prompt (None: the last agent's own cue)."""

    def single_model_prompt(self, prompts: Mapping[str, str]) -> str:
        """The one prompt of the single-model baseline, from this turn's prompts: the single-model
        instructions, then the last agent's task message (source text and cue)."""
        if self.single_instructions is None:
            raise NotImplementedError(f"{type(self).__name__} defines no single-model prompt (single_instructions)")
        last = self.possible_agents[-1]
        body = prompts[last][len(self.role_instructions(last)) :].strip()  # task message = source text + cue
        text, cue = split_cue(body)
        return f"{self.single_instructions}\n\n{text}\n\n{self.single_cue or cue}"

    def split_single_response(self, text: str) -> dict[str, str]:
        """One single-model response as this env's joint action (default: the delimiter rule over two parts:
        a line holding only ``---``, else the first blank line, else the first sentence)."""
        if len(self.possible_agents) != 2:
            raise NotImplementedError(f"{type(self).__name__} has {len(self.possible_agents)} agents, not two parts")
        return dict(zip(self.possible_agents, split_two_parts(text), strict=True))

    def single_feedback_message(self, task: Task, history: tuple[Turn, ...]) -> str:
        """The user message that opens turn ``len(history)`` of the single-model view in a multi-turn episode
        (default: the last agent's :meth:`feedback_message`, the agent whose task message the single model
        answers)."""
        return self.feedback_message(task, self.possible_agents[-1], history)

    def handoff_message(self, first_text: str) -> str:
        """What the second agent is told of the first agent's text in the sequential protocol."""
        raise NotImplementedError(f"{type(self).__name__} defines no sequential hand-off (handoff_message)")

    # ----- PettingZoo API --------------------------------------------------------------------------------
    def observation_space(self, agent: str) -> spaces.Space[Any]:
        return self._observation_spaces[self._known_agent(agent)]

    def action_space(self, agent: str) -> spaces.Space[Any]:
        return self._action_spaces[self._known_agent(agent)]

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, Any]]]:
        self._check_open()
        task = self._select_task(options or {}, seed)
        self._state = _EpisodeState(task=task)
        self.agents = list(self.possible_agents)
        for agent in self.agents:
            system = {"role": "system", "content": self.role_instructions(agent)}
            self._state.messages[agent] = (system, {"role": "user", "content": self.task_message(task, agent)})
        infos = {agent: self._base_info(agent) for agent in self.agents}
        self._state.last_infos = infos
        return self._observations(), copy.deepcopy(infos)

    def step(
        self, actions: dict[str, str]
    ) -> tuple[
        dict[str, dict[str, str]],
        dict[str, float],
        dict[str, bool],
        dict[str, bool],
        dict[str, dict[str, Any]],
    ]:
        self._check_actions(actions)
        state = self._state
        assert state.task is not None
        score = self.score(state.task, actions)
        joint_action = {agent: actions[agent] for agent in self.agents}
        state.history += (Turn(messages=dict(state.messages), actions=joint_action, score=score),)
        state.turn += 1
        terminated = score.solved or score.failed
        truncated = not terminated and state.turn >= self.max_turns
        rewards = {agent: self._reward(agent, score) for agent in self.agents}
        infos = {agent: {**self._base_info(agent), **_score_info(agent, score)} for agent in self.agents}
        if not (terminated or truncated):
            for agent in self.agents:
                feedback = self.feedback_message(state.task, agent, state.history)
                reply = {"role": "assistant", "content": joint_action[agent]}
                state.messages[agent] = state.messages[agent] + (reply, {"role": "user", "content": feedback})
                infos[agent]["messages"] = list(state.messages[agent])
        observations = self._observations()
        terminations = {agent: terminated for agent in self.agents}
        truncations = {agent: truncated for agent in self.agents}
        state.last_infos = infos
        if terminated or truncated:
            self.agents = []
        return observations, rewards, terminations, truncations, copy.deepcopy(infos)

    def render(self) -> str | None:
        """``"ansi"``: the episode so far as text; ``"human"``: the same, printed; ``None``: nothing."""
        if self.render_mode is None:
            return None
        text = self._render_text()
        if self.render_mode == "human":
            print(text)
            return None
        return text

    def _render_text(self) -> str:
        state = self._state
        if state.task is None:
            return "(not reset)"
        lines = [f"task {state.task.task_id} [{state.task.split}], turn {state.turn}/{self.max_turns}"]
        for turn_index, turn in enumerate(state.history):
            lines.append(f"--- turn {turn_index + 1}: joint reward {turn.score.joint:.3f}")
            for agent, text in turn.actions.items():
                lines.append(f"[{agent}] {text}")
        return "\n".join(lines)

    def close(self) -> None:
        self._closed = True

    def state(self) -> dict[str, Any]:
        """A JSON-friendly summary of the global state (task, turn, joint rewards so far)."""
        task = self._state.task
        return {
            "task_id": None if task is None else task.task_id,
            "turn": self._state.turn,
            "joint_rewards": [turn.score.joint for turn in self._state.history],
        }

    # ----- extras for trainers ----------------------------------------------------------------------------
    def chat_messages(self, agent: str) -> list[Message]:
        """``agent``'s current prompt as a chat (what ``infos[agent]["messages"]`` holds): the system message
        (its role), the task as the first user message, then each earlier turn's reply and feedback. Models
        with a chat template are prompted with this; ``observations[agent]["prompt"]`` is the same text."""
        self._known_agent(agent)
        return [dict(message) for message in self._state.messages.get(agent, ())]

    def answer_start_of(self, agent: str) -> str:
        """The text ``agent``'s answer should begin with ("" = none; ``infos[agent]["answer_start"]``). A
        policy that writes its answer as a continuation puts it at the start of the reply (after the chat
        template's opening of the assistant's turn) and submits it + the continuation as the action. The env
        scores the action as given, whether or not it begins so."""
        self._known_agent(agent)
        return ""

    def clone(self) -> CoopParallelEnv:
        """An exact, independent copy of this env at its current state (RNG included)."""
        twin = copy.copy(self)
        twin.agents = list(self.agents)
        twin._rng = copy.deepcopy(self._rng)
        twin._state = _EpisodeState(
            task=self._state.task,
            turn=self._state.turn,
            history=self._state.history,
            messages=dict(self._state.messages),
            last_infos=copy.deepcopy(self._state.last_infos),
        )
        return twin

    @property
    def splits(self) -> tuple[str, ...]:
        return self.tasks.splits

    def task_ids(self, split: str | None = None) -> list[str]:
        """Ids of the loaded tasks of ``split`` (all tasks when ``None``), in dataset order."""
        return self.tasks.ids(split)

    @property
    def current_task(self) -> Task | None:
        return self._state.task

    @property
    def history(self) -> tuple[Turn, ...]:
        return self._state.history

    # ----- internals -------------------------------------------------------------------------------------
    def _known_agent(self, agent: str) -> str:
        if agent not in self._observation_spaces:
            raise ValueError(f"unknown agent {agent!r}; agents of this env: {', '.join(self.possible_agents)}")
        return agent

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{type(self).__name__} was closed; make a new env")

    def _select_task(self, options: Mapping[str, Any], seed: int | None) -> Task:
        unknown = set(options) - {"task_id", "split", "index"}
        if unknown:  # PettingZoo's API test passes arbitrary options, so these cannot be an error
            warnings.warn(
                f"ignoring unknown reset option(s) {sorted(unknown)}; known: task_id, split, index", stacklevel=3
            )
        task: Task | None = None
        if "task_id" in options:
            if set(options) != {"task_id"}:
                raise ValueError("reset option 'task_id' cannot be combined with 'split' or 'index'")
            task = self.tasks.get(options["task_id"])
        else:
            split_tasks = self.tasks.split_tasks(options.get("split", self.split))
            index = options.get("index")
            if index is not None and (not isinstance(index, (int, np.integer)) or not 0 <= index < len(split_tasks)):
                raise ValueError(f"reset option 'index' must be an int in [0, {len(split_tasks)}), got {index!r}")
            if index is not None:
                task = split_tasks[int(index)]
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        if task is None:
            task = split_tasks[int(self._rng.integers(len(split_tasks)))]
        return task

    def _check_actions(self, actions: Any) -> None:
        self._check_open()
        if self._state.task is None:
            raise ValueError("step() called before reset()")
        if not self.agents:
            raise ValueError("step() called after the episode ended; call reset() first")
        if not isinstance(actions, Mapping):
            raise TypeError(f"actions must be a dict of agent -> str, got {type(actions).__name__}")
        missing = [a for a in self.agents if a not in actions]
        extra = [a for a in actions if a not in self.agents]
        if missing or extra:
            raise ValueError(f"actions must have exactly the keys {self.agents}; missing {missing}, unexpected {extra}")
        for agent in self.agents:
            text = actions[agent]
            if not isinstance(text, str):
                raise TypeError(f"action of agent {agent!r} must be a str, got {type(text).__name__}")
            if len(text) > self.max_action_chars:
                raise ValueError(
                    f"action of agent {agent!r} has {len(text)} characters; the limit is max_action_chars={self.max_action_chars}"
                )

    def _reward(self, agent: str, score: Score) -> float:
        return float(score.joint if self.reward_mode == "joint" else score.individual[agent])

    def _observations(self) -> dict[str, dict[str, str]]:
        return {agent: {"prompt": self.render_prompt(self._state.messages[agent])} for agent in self.agents}

    def _base_info(self, agent: str) -> dict[str, Any]:
        task = self._state.task
        assert task is not None
        return {
            "task_id": task.task_id,
            "split": task.split,
            "turn": self._state.turn,
            "messages": list(self._state.messages[agent]),
            "answer_start": self.answer_start_of(agent),
        }


def split_cue(prompt: str) -> tuple[str, str]:
    """(everything before the cue, the cue): the cue is the prompt's last blank-line-separated paragraph."""
    head, sep, cue = prompt.rpartition("\n\n")
    if not sep:
        raise ValueError("prompt has no blank line before its cue")
    return head, cue


DELIMITER = "---"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_two_parts(text: str) -> tuple[str, str]:
    """The delimiter rule: part 1 before the first line holding only ``---`` and part 2 after it; without
    such a line, the first paragraph and the rest; without a blank line, the first sentence and the rest
    (a one-sentence text gives part 2 = "")."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.strip() == DELIMITER:
            return "\n".join(lines[:i]).strip(), "\n".join(lines[i + 1 :]).strip()
    head, sep, rest = text.strip().partition("\n\n")
    if sep:
        return head.strip(), rest.strip()
    parts = _SENTENCE_END.split(text.strip(), maxsplit=1)
    return parts[0].strip(), parts[1].strip() if len(parts) > 1 else ""


def _score_info(agent: str, score: Score) -> dict[str, Any]:
    return {
        "joint_reward": float(score.joint),
        "individual_reward": float(score.individual[agent]),
        "breakdown": dict(score.breakdown),
        "solved": score.solved,
    }


def _check_arguments(
    max_turns: int, reward_mode: str, render_mode: str | None, max_action_chars: int, render_modes: Sequence[str]
) -> None:
    if not isinstance(max_turns, int) or isinstance(max_turns, bool) or max_turns < 1:
        raise ValueError(f"max_turns must be an int >= 1, got {max_turns!r}")
    if reward_mode not in ("joint", "independent"):
        raise ValueError(f"reward_mode must be 'joint' or 'independent', got {reward_mode!r}")
    if render_mode is not None and render_mode not in render_modes:
        raise ValueError(f"render_mode must be None or one of {list(render_modes)}, got {render_mode!r}")
    if not isinstance(max_action_chars, int) or max_action_chars < 1:
        raise ValueError(f"max_action_chars must be a positive int, got {max_action_chars!r}")


@functools.cache
def _aec_wrapper() -> Any:
    from pettingzoo.utils.conversions import parallel_to_aec

    return parallel_to_aec


def make_aec(env_id: str, **kwargs: Any) -> Any:
    """The AEC form of a registered env (used by PettingZoo's ``make("aec", id)``)."""
    from llm_coop_envs.registration import make

    return _aec_wrapper()(make(env_id, **kwargs))
