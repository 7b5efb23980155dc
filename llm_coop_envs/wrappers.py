"""Views of a team env: the single-agent view, in which ONE model writes every agent's part.

``make_env("single:coop_writing-v0")`` (or ``SingleAgentEnv(make("coop_writing-v0"))``) is a one-agent env
whose agent ``single`` gets the env's single-model prompt (:meth:`CoopParallelEnv.single_model_prompt`); its
response is split into the team's joint action by :meth:`CoopParallelEnv.split_single_response` and the
inner env scores that pair. Training it with MAGRPO is the paper's "fine-tuned single model" (GRPO) baseline.
In a multi-turn env it revises its whole answer after the inner env's single-model feedback
(:meth:`CoopParallelEnv.single_feedback_message`).
"""

from __future__ import annotations

import copy
from typing import Any

from llm_coop_envs.core import CoopParallelEnv

__all__ = ["SINGLE_AGENT", "SINGLE_PREFIX", "SingleAgentEnv", "base_env_id", "make_env"]

SINGLE_AGENT = "single"
SINGLE_PREFIX = "single:"


def base_env_id(env_id: str) -> str:
    """The team env id of ``single:<id>`` (other ids unchanged)."""
    return env_id[len(SINGLE_PREFIX) :] if env_id.startswith(SINGLE_PREFIX) else env_id


class SingleAgentEnv:
    """A team env seen as a one-agent env (agent ``single``). Rewards, infos and breakdowns are the inner env's
    (``infos["single"]`` = the first agent's info; the individual reward is the joint reward, so
    ``reward_mode`` makes no difference).

    Multi-turn (the inner env's ``max_turns`` > 1): as in the team env, an episode that is neither solved nor
    at its last turn goes on; the single model's next prompt is its chat so far, its reply as an assistant
    message, then the inner env's :meth:`~CoopParallelEnv.single_feedback_message` as the next user message
    (``infos["single"]["messages"]``, :meth:`chat_messages`)."""

    possible_agents = [SINGLE_AGENT]

    def __init__(self, inner: CoopParallelEnv) -> None:
        if getattr(inner, "answer_start", False):
            raise ValueError("SingleAgentEnv takes no answer_start: the team's answer starts are per agent")
        self.inner = inner
        self.agents: list[str] = []
        self.last_actions: dict[str, str] = {}
        self._messages: tuple[dict[str, str], ...] = ()

    @property
    def reward_mode(self) -> str:
        return "joint"

    @property
    def max_turns(self) -> int:
        return self.inner.max_turns

    @property
    def spec(self) -> Any:
        return self.inner.spec

    def task_ids(self, split: str | None = None) -> list[str]:
        return self.inner.task_ids(split)

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, infos = self.inner.reset(seed=seed, options=options)
        self.agents = [SINGLE_AGENT]
        prompt = self.inner.single_model_prompt({a: o["prompt"] for a, o in obs.items()})
        system = self.inner.single_instructions or ""
        user = prompt[len(system) :].strip()  # the source text and the cue
        self._messages = ({"role": "system", "content": system}, {"role": "user", "content": user})
        info = {**infos[self.inner.possible_agents[0]], "messages": self.chat_messages(SINGLE_AGENT)}
        info["answer_start"] = ""  # the team's answer starts are per agent (refused above)
        return {SINGLE_AGENT: {"prompt": prompt}}, {SINGLE_AGENT: info}

    def chat_messages(self, agent: str) -> list[dict[str, str]]:
        """The single model's prompt as a chat: the single-model instructions as the system message, the rest
        (source text and cue) as the user message; in later turns each earlier reply and its feedback."""
        if agent != SINGLE_AGENT:
            raise ValueError(f"SingleAgentEnv has one agent, {SINGLE_AGENT!r}, not {agent!r}")
        return [dict(message) for message in self._messages]

    def step(self, actions: dict[str, str]):
        if set(actions) != {SINGLE_AGENT}:
            raise ValueError(f"SingleAgentEnv expects exactly the action of {SINGLE_AGENT!r}, got {sorted(actions)}")
        inner, reply = self.inner, actions[SINGLE_AGENT]
        self.last_actions = inner.split_single_response(reply)
        _, _, terms, truncs, infos = inner.step(self.last_actions)
        first = inner.possible_agents[0]
        info = dict(infos[first])
        info["individual_reward"] = info["joint_reward"]
        done = terms[first] or truncs[first]
        observations: dict[str, dict[str, str]] = {}
        if done:
            self.agents = []
        else:
            task = inner.current_task
            assert task is not None
            feedback = inner.single_feedback_message(task, inner.history)
            self._messages += ({"role": "assistant", "content": reply}, {"role": "user", "content": feedback})
            observations = {SINGLE_AGENT: {"prompt": inner.render_prompt(self._messages)}}
        info |= {"messages": self.chat_messages(SINGLE_AGENT), "answer_start": ""}  # the single model's, not helper's
        joint = float(info["joint_reward"])
        return (
            observations,
            {SINGLE_AGENT: joint},
            {SINGLE_AGENT: terms[first]},
            {SINGLE_AGENT: truncs[first]},
            {SINGLE_AGENT: info},
        )

    def clone(self) -> SingleAgentEnv:
        other = copy.copy(self)
        other.inner = self.inner.clone()
        other.agents = list(self.agents)
        return other

    def close(self) -> None:
        self.inner.close()


def make_env(env_id: str, **kwargs: Any) -> Any:
    """``llm_coop_envs.make``, which also accepts ``single:<id>`` (the single-agent view of ``<id>``)."""
    from llm_coop_envs.registration import make

    if env_id.startswith(SINGLE_PREFIX):
        kwargs.pop("reward_mode", None)
        return SingleAgentEnv(make(base_env_id(env_id), **kwargs))
    return make(env_id, **kwargs)
