"""A scripted, model-free example entry: extractive "lead" writing on the test split of a writing env.

It exists so that ``build`` has real, re-scorable rows before any trained entry lands, and as a worked
example of the path the evaluation runner takes (episodes -> transcript -> entry). Agent 1 copies the
first sentence(s) of the source; agent 2 copies a seeded selection of the remaining sentences, joined with
transition words; sentences are repeated when a role needs a minimum length. No model is involved, so it is
family ``scripted``, a floor that any trained method should beat.

    python -m llm_coop_leaderboard example --env coop_writing-v0 --seeds 0 1 2
"""

from __future__ import annotations

import random
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llm_coop_envs import make
from llm_coop_envs.core import CoopParallelEnv, Task
from llm_coop_leaderboard.entries import collect_provenance, dataset_fingerprint, make_entry, write_entry
from llm_coop_leaderboard.schema import leaderboard_root
from llm_coop_leaderboard.transcripts import Transcript, TranscriptRecord, TurnRecord, write_transcript

__all__ = ["SOURCE_FIELD", "lead_actions", "write_example_entry"]

SOURCE_FIELD = {"coop_writing-v0": "post", "coop_abstract_expansion-v0": "abstract"}
"""The field holding the source prose of each writing env (the ``text`` field adds headers)."""
_CONNECTORS = ("Moreover, ", "However, ", "As a result, ", "In addition, ", "For example, ", "")
_MIN_WORDS = {"coop_writing-v0": (8, 20), "coop_abstract_expansion-v0": (130, 130)}


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]


def _pad(sentences: list[str], pool: list[str], min_words: int, max_words: int = 240) -> str:
    chosen = list(sentences)
    index = 0
    while sum(len(s.split()) for s in chosen) < min_words and pool:
        chosen.append(pool[index % len(pool)])
        index += 1
    words = " ".join(chosen).split()
    return " ".join(words[:max_words])


def _connect(connector: str, sentence: str) -> str:
    return connector + sentence[:1].lower() + sentence[1:] if connector else sentence


def lead_actions(env_id: str, agents: Sequence[str], task: Task, seed: int) -> dict[str, str]:
    """The scripted joint action for ``task``; deterministic given (env, task, seed)."""
    rng = random.Random(f"{env_id}:{task.task_id}:{seed}")
    sentences = _sentences(task.fields[SOURCE_FIELD[env_id]])
    head = rng.randint(1, max(1, min(2, len(sentences) - 1)))
    rest = sentences[head:] or sentences
    picked = sorted(rng.sample(range(len(rest)), k=max(1, round(len(rest) * rng.uniform(0.5, 1.0)))))
    second = [rest[i] if j == 0 else _connect(rng.choice(_CONNECTORS), rest[i]) for j, i in enumerate(picked)]
    min_first, min_second = _MIN_WORDS[env_id]
    first_agent, second_agent = agents
    return {
        first_agent: _pad(sentences[:head], sentences, min_first),
        second_agent: _pad(second, rest, min_second),
    }


def _episode(env: CoopParallelEnv, env_id: str, task: Task, seed: int) -> TranscriptRecord:
    env.reset(seed=seed, options={"task_id": task.task_id})
    actions = lead_actions(env_id, env.possible_agents, task, seed)
    _, rewards, _, _, infos = env.step(actions)
    info = next(iter(infos.values()))
    turn = TurnRecord(
        actions=actions,
        joint_reward=info["joint_reward"],
        individual_rewards={agent: infos[agent]["individual_reward"] for agent in actions},
        breakdown=info["breakdown"],
    )
    return TranscriptRecord(seed=seed, task_id=task.task_id, sample=0, turns=(turn,))


def write_example_entry(env_id: str, seeds: Sequence[int], split: str = "test", root: Path | None = None) -> Path:
    """Run the scripted policy, write its transcript and entry under ``root``; return the entry path."""
    root = root or leaderboard_root()
    env = make(env_id)
    tasks = env.tasks.split_tasks(split)
    records = tuple(_episode(env, env_id, task, seed) for seed in seeds for task in tasks)
    entry_id = f"scripted-lead--{env_id.replace('/', '--')}--{split}"
    transcript = Transcript(env_id, env.spec.spec_hash(), split, tuple(env.possible_agents), records)
    transcript_path = root / "transcripts" / f"{entry_id}.jsonl.gz"
    write_transcript(transcript_path, transcript)
    command = "python -m llm_coop_leaderboard example " + shlex.join(
        ["--env", env_id, "--split", split, "--seeds", *map(str, seeds)]
    )
    entry = make_entry(
        entry_id=entry_id,
        env=env,
        transcript=transcript,
        transcript_path=transcript_path,
        leaderboard_dir=root,
        dataset=dataset_fingerprint(env, split, "bundled", f"llm-coop-envs bundled data (package {_version()})"),
        method=_METHOD,
        models=[{"agent": agent, "model": "scripted:extractive-lead"} for agent in env.possible_agents],
        decoding={"samples_per_task": 1, "max_turns": 1},
        provenance=_stable_provenance(command),
    )
    path = root / "entries" / f"{entry_id}.json"
    write_entry(path, entry)
    return path


_METHOD: dict[str, Any] = {
    "name": "Extractive lead (scripted)",
    "family": "scripted",
    "description": "No model: agent 1 copies the first sentence(s), agent 2 a seeded selection of the rest "
    "joined with transition words (llm_coop_leaderboard/example.py).",
}


def _version() -> str:
    import llm_coop_envs

    return llm_coop_envs.__version__


def _stable_provenance(command: str) -> dict[str, Any]:
    provenance = collect_provenance(command, sandbox_backend=None, hardware="any CPU (scripted, no model)")
    provenance["libraries"] = {k: v for k, v in provenance["libraries"].items() if k in ("gymnasium", "pettingzoo")}
    return provenance
