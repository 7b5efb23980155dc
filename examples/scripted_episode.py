"""Play one episode of every registered env with a scripted (non-learning) policy and print it.

    python examples/scripted_episode.py [--env coop_writing-v0] [--seed 0]

The scripted policy copies sentences of the source text: the first agent takes a short extract, the
second a longer one joined with transition words. It shows the API and the reward breakdown; it is a
baseline for nothing.
"""

from __future__ import annotations

import argparse
import re

from llm_coop_envs import make, registry_ids

TRANSITIONS = ("Moreover,", "However,", "As a result,", "In addition,")


def sentences(prompt: str) -> list[str]:
    body = prompt.split("\n\n")[-2]  # the source text sits between the instructions and the cue line
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", body) if len(s.split()) > 3]


def scripted_actions(observations: dict[str, dict[str, str]], agents: list[str]) -> dict[str, str]:
    actions = {}
    for position, agent in enumerate(agents):
        parts = sentences(observations[agent]["prompt"])
        if position == 0:
            actions[agent] = " ".join(parts[:2])
        else:
            joined = [
                f"{TRANSITIONS[i % len(TRANSITIONS)]} {s[0].lower()}{s[1:]}" if i else s for i, s in enumerate(parts)
            ]
            actions[agent] = " ".join(joined)
    return actions


def play(env_id: str, seed: int) -> None:
    env = make(env_id, render_mode="ansi")
    observations, _ = env.reset(seed=seed, options={"split": "test", "index": 0})
    print(f"=================== {env_id} ===================")
    for agent in env.agents:
        print(f"--- prompt of {agent} ---\n{observations[agent]['prompt']}\n")
    while env.agents:
        actions = scripted_actions(observations, env.agents)
        observations, rewards, terminations, truncations, infos = env.step(actions)
        print(env.render())
        first = next(iter(infos))
        breakdown = infos[first]["breakdown"]
        print("rewards:", {agent: round(value, 3) for agent, value in rewards.items()})
        print(
            "breakdown:",
            {key: round(value, 3) if isinstance(value, float) else value for key, value in breakdown.items()},
        )
    env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", choices=registry_ids(), action="append", help="env id (default: every writing env)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for env_id in args.env or [i for i in registry_ids() if "coding" not in i]:
        play(env_id, args.seed)


if __name__ == "__main__":
    main()
