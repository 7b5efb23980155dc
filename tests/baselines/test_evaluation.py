"""Untrained-baseline prompts and protocols, the single-agent view, and the evaluation runner end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from baselines.evaluation import EvalConfig, Round, config_from_args, evaluate, run_protocol
from baselines.untrained import (
    discussion_prompt,
    make_env,
    sequential_prompt,
    single_prompt,
    split_cue,
    split_single,
)
from llm_coop_envs import make, registry_ids
from llm_coop_leaderboard import load_entry, read_transcript, rescore

REPO = Path(__file__).resolve().parents[2]


# ----- prompts and the delimiter rule ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "first", "second"),
    [
        ("a b c\n---\nd e f", "a b c", "d e f"),
        ("a b.\n\nc d.\n\ne f.", "a b.", "c d.\n\ne f."),
        ("One sentence. Then the rest! And more.", "One sentence.", "Then the rest! And more."),
        ("only one sentence", "only one sentence", ""),
        ("x\n---\ny\n---\nz", "x", "y\n---\nz"),
    ],
)
def test_split_single_delimiter_rule(text, first, second):
    assert split_single("coop_writing-v0", ["summary", "elaboration"], text) == {
        "summary": first,
        "elaboration": second,
    }


def test_split_single_coding_gives_everything_to_main():
    assert split_single("coop_coding-v0", ["helper", "main"], "def f():\n    return 1") == {
        "helper": "",
        "main": "def f():\n    return 1",
    }


@pytest.mark.parametrize("env_id", registry_ids())
def test_baseline_prompts_insert_before_the_cue_and_never_show_tests(env_id):
    env = make(env_id)
    obs, _ = env.reset(seed=0, options={"task_id": env.task_ids("test")[0]})
    first, second = env.possible_agents
    _, cue = split_cue(obs[second]["prompt"])
    sequential = sequential_prompt(env_id, obs[second]["prompt"], "Partner text here.")
    assert sequential.endswith("\n\n" + cue) and "Partner text here." in sequential
    revised = discussion_prompt(obs[first]["prompt"], "MY DRAFT", "THEIR DRAFT")
    assert revised.index("MY DRAFT") < revised.index("THEIR DRAFT") < revised.index(split_cue(obs[first]["prompt"])[1])
    single = single_prompt(env_id, env, {a: o["prompt"] for a, o in obs.items()})
    assert env.role_instructions(second) not in single
    for prompt in (sequential, revised, single):
        assert "def check(" not in prompt and "assert " not in prompt


def test_sequential_target_length_is_clamped_to_the_length_gate():
    prompt = "Instructions\n\nPost text\n\nDetailed summary:"
    assert "Write about 24 words." in sequential_prompt("coop_writing-v0", prompt, " ".join(["w"] * 10))
    assert "Write about 256 words." in sequential_prompt("coop_writing-v0", prompt, " ".join(["w"] * 200))
    assert "Write about 128 words." in sequential_prompt("coop_abstract_expansion-v0", prompt, "short")


@pytest.mark.parametrize("env_id", ["coop_writing-v0", "coop_abstract_expansion-v0"])
def test_single_agent_env_scores_the_split_response_like_the_two_agent_env(env_id):
    single = make_env(f"single:{env_id}")
    task = single.task_ids("test")[0]
    obs, _ = single.reset(seed=0, options={"task_id": task})
    assert list(obs) == ["single"] and obs["single"]["prompt"].endswith(":")
    text = "The post asks for advice on a job.\n---\nMoreover, the writer explains the job offer, however " * 3
    branch = single.clone()
    _, rewards, terms, truncs, infos = branch.step({"single": text})
    plain = make(env_id)
    plain.reset(seed=0, options={"task_id": task})
    actions = split_single(env_id, plain.possible_agents, text)
    _, plain_rewards, *_ = plain.step(actions)
    assert rewards["single"] == pytest.approx(plain_rewards[plain.possible_agents[0]])
    assert infos["single"]["joint_reward"] == rewards["single"] and (terms["single"] or truncs["single"])
    assert single.agents == ["single"]  # the clone's step left the original untouched
    with pytest.raises(ValueError, match="single"):
        single.step({"summary": "x"})


# ----- protocols with a scripted generator -----------------------------------------------------------------------
class ScriptedGenerate:
    """Answers every prompt with '<role> answer k' and a fixed time per call; records the prompts."""

    def __init__(self, seconds: dict[str, float]):
        self.seconds, self.calls = seconds, []

    def __call__(self, role, prompts):
        self.calls.append((role, list(prompts)))
        texts = [f"{role} answer {len(self.calls)}." for _ in prompts]
        return texts, [3] * len(prompts), self.seconds.get(role, 1.0)


def _prompts(env):
    obs, _ = env.reset(seed=0, options={"task_id": env.task_ids("test")[0]})
    return {a: [obs[a]["prompt"]] for a in env.possible_agents}


def test_parallel_round_costs_the_slower_agent_sequential_the_sum():
    env = make("coop_writing-v0")
    gen = ScriptedGenerate({"summary": 1.0, "elaboration": 3.0})
    (parallel,) = run_protocol("parallel", "coop_writing-v0", env, _prompts(env), gen)
    assert parallel.seconds == 3.0 and parallel.generation_seconds == 4.0 and parallel.new_tokens == [6]
    gen = ScriptedGenerate({"summary": 1.0, "elaboration": 3.0})
    (sequential,) = run_protocol("sequential", "coop_writing-v0", env, _prompts(env), gen)
    assert sequential.seconds == 4.0
    assert [role for role, _ in gen.calls] == ["summary", "elaboration"]
    assert "summary answer 1." in gen.calls[1][1][0]  # agent 2 saw agent 1's text


def test_discussion_round_two_sees_both_drafts_and_single_uses_one_call():
    env = make("coop_writing-v0")
    gen = ScriptedGenerate({})
    rounds = run_protocol("discussion", "coop_writing-v0", env, _prompts(env), gen)
    assert len(rounds) == 2 and isinstance(rounds[1], Round)
    round_two = [prompts[0] for role, prompts in gen.calls[2:]]
    assert all("summary answer 1." in p and "elaboration answer 2." in p for p in round_two)
    gen = ScriptedGenerate({})
    (single,) = run_protocol("single", "coop_writing-v0", env, _prompts(env), gen)
    assert [role for role, _ in gen.calls] == ["single"] and set(single.actions[0]) == {"summary", "elaboration"}


# ----- the runner end to end ---------------------------------------------------------------------------------------
def _quick(**kw) -> EvalConfig:
    base = dict(max_new_tokens=8, progress=False, command="llm-coop eval (test)")
    return EvalConfig(**{**base, **kw})


def test_eval_writes_a_valid_rescorable_entry_with_timings(tmp_path):
    cfg = _quick(env="coop_writing-v0", baseline="sequential", seeds=(0, 1), root=tmp_path)
    result = evaluate(cfg)
    entry = load_entry(result.entry_path, tmp_path)
    assert entry["method"]["family"] == "untrained" and entry["seeds"] == [0, 1]
    assert entry["provenance"]["command"] == "llm-coop eval (test)"
    for metrics in entry["metrics"]["per_seed"].values():
        assert {"return", "structure", "style", "coherence", "tokens_per_s", "response_time_s"} <= set(metrics)
        assert metrics["tokens_per_s"] > 0 and metrics["response_time_s"] > 0
    transcript = read_transcript(tmp_path / entry["transcript"]["path"])
    assert len(transcript.records) == 2 * 20
    assert rescore(entry, transcript).records == 40
    again = evaluate(_quick(env="coop_writing-v0", baseline="sequential", seeds=(0, 1), root=tmp_path / "b"))
    assert again.per_seed["0"]["return"] == result.per_seed["0"]["return"]  # seeded: same texts, same scores


def test_eval_coding_has_pass_at_k_and_batch_scoring(tmp_path, monkeypatch):
    from llm_coop_envs.coding import CodingEnv

    calls = []
    original = CodingEnv.score_many
    monkeypatch.setattr(CodingEnv, "score_many", lambda self, items: calls.append(len(items)) or original(self, items))
    cfg = _quick(env="coop_coding-v0", baseline="parallel", samples=2, pass_k=(1, 2), root=tmp_path)
    result = evaluate(cfg)
    assert calls == [16 * 2]  # one batch for every task x sample
    assert {"pass@1", "pass@2", "tests", "syntax", "cooperation"} <= set(result.per_seed["0"])


def test_eval_of_part_of_a_split_writes_no_entry(tmp_path):
    result = evaluate(_quick(env="coop_abstract_expansion-v0", baseline="discussion", tasks=2, root=tmp_path))
    assert result.entry_path is None and result.transcript_path.exists()
    records = read_transcript(result.transcript_path).records
    assert len(records) == 2 and len(records[0].turns) == 2  # both discussion rounds kept, round 2 reported


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_eval_of_a_trained_run_directory(tmp_path, finetune):
    from baselines.magrpo import MAGRPOConfig
    from baselines.training import train

    run = tmp_path / "run-seed3"
    cfg = MAGRPOConfig(
        steps=1, num_generations=2, max_new_tokens=6, eval_tasks=1, eval_seeds=1, finetune=finetune,
        output_dir=run, seed=3,
    )  # fmt: skip
    train(cfg, "magrpo", progress=False)
    result = evaluate(_quick(env="coop_writing-v0", policy=str(tmp_path / "run-seed{seed}"), seeds=(3,), root=tmp_path))
    entry = json.loads(result.entry_path.read_text())
    assert entry["method"]["name"] == "MAGRPO" and entry["method"]["config"]["train_steps"] == 1
    models = {m["agent"]: m for m in entry["models"]}
    assert set(models) == {"summary", "elaboration"}
    key = "adapter_hash" if finetune == "lora" else "model_hash"
    assert all(len(m[key]) == 64 for m in models.values())


def test_single_agent_grpo_trains_on_the_single_view_and_evaluates_as_single(tmp_path):
    from baselines.magrpo import MAGRPOConfig
    from baselines.training import train

    cfg = MAGRPOConfig(
        env="single:coop_writing-v0", steps=1, num_generations=2, max_new_tokens=6, eval_tasks=1, eval_seeds=1,
        output_dir=tmp_path / "solo",
    )  # fmt: skip
    train(cfg, "magrpo", progress=False)
    assert (tmp_path / "solo" / "final" / "single").is_dir()
    result = evaluate(_quick(env="coop_writing-v0", policy=str(tmp_path / "solo"), root=tmp_path))
    entry = json.loads(result.entry_path.read_text())
    assert entry["method"]["name"] == "Single-agent GRPO" and entry["method"]["config"]["protocol"] == "single"
    assert entry["decoding"]["max_new_tokens"] == 16  # both parts: twice the per-agent budget


def test_cli_dispatches_eval_and_leaderboard(capsys):
    from baselines.cli import main

    with pytest.raises(SystemExit) as done:
        main(["leaderboard", "--help"])
    assert done.value.code == 0 and "build" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["eval", "--env", "coop_writing-v0"])  # --policy or --baseline is required
    assert "one of the arguments --policy --baseline is required" in capsys.readouterr().err


def test_cli_flags_and_errors():
    cfg = config_from_args(["--env", "coop_coding-v0", "--policy", "runs/c0", "--seeds", "0", "1", "2", "3", "4"])
    assert cfg.seeds == (0, 1, 2, 3, 4) and cfg.policy == "runs/c0"
    assert cfg.command == "llm-coop eval --env coop_coding-v0 --policy runs/c0 --seeds 0 1 2 3 4"
    with pytest.raises(SystemExit):
        config_from_args(["--env", "coop_writing-v0", "--baseline", "telepathy"])
    with pytest.raises(ValueError, match="--model is for --baseline"):
        _quick(env="coop_writing-v0", policy="runs/x", model="m").validate()
    assert REPO.joinpath("baselines", "evaluation.py").exists()
