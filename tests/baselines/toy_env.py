"""A scripted two-agent toy env with the llm_coop_envs API, for learner tests that need no real task."""

from __future__ import annotations

import copy


class ToyEnv:
    """A two-agent env with the llm_coop_envs API and a transparent reward, for tests that need no real
    task: agent i's individual reward is 1 / (1 + |words - target_i|) (targets 4 and 12), the joint reward
    is their mean. `max_turns=2` feeds each agent its own previous answer back."""

    possible_agents = ["first", "second"]

    def __init__(self, reward_mode: str = "joint", max_turns: int = 1, dataset: str = "bundled"):
        self.reward_mode, self.max_turns = reward_mode, max_turns
        self.agents: list[str] = []
        self._turn, self._task = 0, ""
        self._tasks = {"train": [f"train-{i}" for i in range(6)], "test": [f"test-{i}" for i in range(3)]}

    def task_ids(self, split: str = "train") -> list[str]:
        return list(self._tasks[split])

    def reset(self, seed=None, options=None):
        self._task = (options or {}).get("task_id", "train-0")
        self._turn, self.agents = 0, list(self.possible_agents)
        return {a: {"prompt": f"Task {self._task} for {a}:"} for a in self.agents}, {a: {} for a in self.agents}

    def clone(self) -> ToyEnv:
        return copy.deepcopy(self)

    @staticmethod
    def individual(agent: str, text: str) -> float:
        target = 4 if agent == "first" else 12
        return 1.0 / (1.0 + abs(len(text.split()) - target))

    @staticmethod
    def _breakdown(actions: dict[str, str]) -> dict:
        """A score's parts as an env reports them: numbers, flags and text."""
        words = sum(len(t.split()) for t in actions.values())
        return {"words": words, "empty": words == 0, "note": "text is not averaged"}

    def step(self, actions: dict[str, str]):
        assert set(actions) == set(self.agents), "missing agent"
        self._turn += 1
        ind = {a: self.individual(a, t) for a, t in actions.items()}
        joint = sum(ind.values()) / len(ind)
        done = self._turn >= self.max_turns
        rewards = {a: (joint if self.reward_mode == "joint" else ind[a]) for a in self.agents}
        infos = {
            a: {"joint_reward": joint, "individual_reward": ind[a], "breakdown": self._breakdown(actions)}
            for a in self.agents
        }
        obs = {a: {"prompt": f"Task {self._task} for {a}: you said {actions[a][:40]!r}. Again:"} for a in self.agents}
        if done:
            self.agents = []
        return obs, rewards, {a: done for a in rewards}, {a: False for a in rewards}, infos


def make_toy_env(env_id: str = "toy-v0", **kwargs) -> ToyEnv:
    return ToyEnv(**kwargs)
