"""Untrained-baseline prompts and protocols, the single-agent view, and the evaluation runner end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from baselines.evaluation import (
    EvalConfig,
    EvalError,
    Round,
    config_from_args,
    entry_env_kwargs,
    entry_id_for,
    evaluate,
    main,
    method_record,
    plan_evaluation,
)
from baselines.heldout import EVAL_SEED, load_run_policies, read_run
from baselines.lm.embedded import EMBEDDED_DIR
from baselines.lm.policies import SamplingConfig
from baselines.untrained import (
    SINGLE_AGENT,
    discussion_prompt,
    generate_calls,
    make_env,
    run_protocol,
    sequential_prompt,
    single_prompt,
    split_cue,
    split_single,
)
from llm_coop_envs import make, registry_ids
from llm_coop_leaderboard import load_entry, read_transcript, rescore


# ----- prompts (the delimiter rule and the hand-off lengths: tests/envs/test_protocol_hooks.py) --------------------
@pytest.mark.parametrize("env_id", registry_ids())
def test_baseline_prompts_insert_before_the_cue_and_never_show_tests(env_id):
    env = make(env_id)
    obs, _ = env.reset(seed=0, options={"task_id": env.task_ids("test")[0]})
    first, second = env.possible_agents
    _, cue = split_cue(obs[second]["prompt"])
    sequential = sequential_prompt(env, obs[second]["prompt"], "Partner text here.")
    assert sequential.endswith("\n\n" + cue) and "Partner text here." in sequential
    revised = discussion_prompt(obs[first]["prompt"], "MY DRAFT", "THEIR DRAFT")
    assert revised.index("MY DRAFT") < revised.index("THEIR DRAFT") < revised.index(split_cue(obs[first]["prompt"])[1])
    single = single_prompt(env, {a: o["prompt"] for a, o in obs.items()})
    assert env.role_instructions(second) not in single
    for prompt in (sequential, revised, single):
        assert "def check(" not in prompt and "assert " not in prompt


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
    actions = split_single(plain, text)
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
    (parallel,) = run_protocol("parallel", env, _prompts(env), gen)
    assert parallel.seconds == 3.0 and parallel.generation_seconds == 4.0 and parallel.new_tokens == [6]
    gen = ScriptedGenerate({"summary": 1.0, "elaboration": 3.0})
    (sequential,) = run_protocol("sequential", env, _prompts(env), gen)
    assert sequential.seconds == 4.0
    assert [role for role, _ in gen.calls] == ["summary", "elaboration"]
    assert "summary answer 1." in gen.calls[1][1][0]  # agent 2 saw agent 1's text


def test_discussion_round_two_sees_both_drafts_and_single_uses_one_call():
    env = make("coop_writing-v0")
    gen = ScriptedGenerate({})
    rounds = run_protocol("discussion", env, _prompts(env), gen)
    assert len(rounds) == 2 and isinstance(rounds[1], Round)
    round_two = [prompts[0] for role, prompts in gen.calls[2:]]
    assert all("summary answer 1." in p and "elaboration answer 2." in p for p in round_two)
    gen = ScriptedGenerate({})
    (single,) = run_protocol("single", env, _prompts(env), gen)
    assert [role for role, _ in gen.calls] == ["single"] and set(single.actions[0]) == {"summary", "elaboration"}


@pytest.mark.parametrize("protocol", ["single", "parallel", "sequential", "discussion"])
def test_generate_calls_counts_what_the_protocol_calls(protocol):
    env = make("coop_coding-v0")  # the progress bar's total is built from this count
    gen = ScriptedGenerate({})
    run_protocol(protocol, env, _prompts(env), gen)
    assert generate_calls(protocol, len(env.possible_agents)) == len(gen.calls)
    with pytest.raises(ValueError, match="unknown protocol"):
        generate_calls("debate", 2)


# ----- the runner end to end ---------------------------------------------------------------------------------------
def _quick(**kw) -> EvalConfig:
    base = dict(progress=False, command="llm-coop eval (test)")
    return EvalConfig(**{**base, **kw})


def _baseline(**kw) -> EvalConfig:
    return _quick(**{"max_new_tokens": 8, **kw})


def _train(out: Path, **fields: Any) -> Path:
    """A tiny `llm-coop train` run of MAGRPO into ``out`` (embedded model, one step)."""
    from baselines.config import RunConfig
    from baselines.training import train

    base = dict(steps=1, num_generations=2, max_new_tokens=40, eval_tasks=2, eval_seeds=2, eval_every=0, seed=3)
    train(RunConfig(output_dir=out, **{**base, **fields}), "magrpo", progress=False)
    return out


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished full-fine-tuning run, trained with seed 3 (do not modify: copy it)."""
    return _train(tmp_path_factory.mktemp("runs") / "run-seed3")


def _copy_run(run: Path, to: Path, **changes: Any) -> Path:
    shutil.copytree(run, to)
    config = json.loads((to / "config.json").read_text())
    (to / "config.json").write_text(json.dumps({**config, **changes}))
    return to


def test_eval_writes_a_valid_rescorable_entry_with_timings_and_never_overwrites_it(tmp_path):
    cfg = _baseline(env="coop_writing-v0", baseline="sequential", seeds=(0, 1), root=tmp_path)
    result = evaluate(cfg)
    entry = load_entry(result.entry_path, tmp_path)
    assert entry["method"]["family"] == "untrained" and entry["seeds"] == [0, 1]
    assert entry["seed_kind"] == "sampling" and "training_seeds" not in entry and "train_steps" not in entry
    assert entry["provenance"]["command"] == "llm-coop eval (test)"
    for metrics in entry["metrics"]["per_seed"].values():
        assert {"return", "structure", "style", "coherence", "tokens_per_s", "response_time_s"} <= set(metrics)
        assert metrics["tokens_per_s"] > 0 and metrics["response_time_s"] > 0
    transcript = read_transcript(tmp_path / entry["transcript"]["path"])
    assert len(transcript.records) == 2 * 20
    assert rescore(entry, transcript).records == 40
    before = result.entry_path.read_bytes()
    with pytest.raises(EvalError, match=rf"{result.entry_path}.* already exists.*--overwrite"):
        evaluate(cfg)
    assert result.entry_path.read_bytes() == before
    again = evaluate(
        _baseline(env="coop_writing-v0", baseline="sequential", seeds=(0, 1), root=tmp_path, overwrite=True)
    )
    assert again.per_seed["0"]["return"] == result.per_seed["0"]["return"]  # seeded: same texts, same scores


def test_partial_transcripts_are_not_overwritten_and_ids_differ_with_the_configuration(tmp_path):
    cfg = _baseline(env="coop_writing-v0", baseline="parallel", tasks=1, root=tmp_path)
    first = evaluate(cfg)
    assert first.entry_path is None and first.transcript_path.parent == tmp_path / "partial"
    with pytest.raises(EvalError, match=rf"{first.transcript_path}.* already exists"):
        evaluate(cfg)
    env = make("coop_writing-v0")
    ids = set()
    for changes in ({}, {"seeds": (0, 1)}, {"temperature": 0.7}, {"samples": 2}, {"max_new_tokens": 9}):
        other = _baseline(**{"env": "coop_writing-v0", "baseline": "parallel", **changes})
        ids.add(entry_id_for(other, plan_evaluation(other), "parallel (untrained)", env))
    assert len(ids) == 5 and all(i.startswith("parallel-untrained--embedded--coop_writing-v0--test--") for i in ids)


def test_eval_coding_has_pass_at_k_and_batch_scoring(tmp_path, monkeypatch):
    from llm_coop_envs.coding import CodingEnv

    calls = []
    original = CodingEnv.score_many
    monkeypatch.setattr(CodingEnv, "score_many", lambda self, items: calls.append(len(items)) or original(self, items))
    cfg = _baseline(env="coop_coding-v0", baseline="parallel", samples=2, pass_k=(1, 2), root=tmp_path)
    result = evaluate(cfg)
    assert calls == [16 * 2]  # one batch for every task x sample
    assert {"pass@1", "pass@2", "tests", "syntax", "cooperation"} <= set(result.per_seed["0"])


def test_eval_of_part_of_a_split_writes_no_entry(tmp_path):
    result = evaluate(_baseline(env="coop_abstract_expansion-v0", baseline="discussion", tasks=2, root=tmp_path))
    assert result.entry_path is None and result.transcript_path.exists()
    records = read_transcript(result.transcript_path).records
    assert len(records) == 2 and len(records[0].turns) == 2  # both discussion rounds kept, round 2 reported


def test_untrained_team_plays_a_multi_turn_env_with_feedback_like_a_trained_run(tmp_path, monkeypatch):
    from baselines.lm.policies import ChatPrompt, Policies
    from baselines.rollout import env_prompt

    calls: list[tuple[Any, dict[str, list[ChatPrompt]]]] = []
    original = Policies.generate
    monkeypatch.setattr(
        Policies,
        "generate",
        lambda self, prompts, *a, **k: calls.append((self, prompts)) or original(self, prompts, *a, **k),
    )
    cfg = _baseline(env="coop_coding-v0", baseline="parallel", max_turns=2, seeds=(0,), root=tmp_path)
    result = evaluate(cfg)
    assert result.entry_path is not None
    entry = load_entry(result.entry_path, tmp_path)
    assert entry["env"]["spec_hash"] == make("coop_coding-v0", max_turns=2).spec.spec_hash()  # the 2-turn board
    assert entry["decoding"]["max_turns"] == 2 and "2 turns" in entry["method"]["description"]
    records = read_transcript(tmp_path / entry["transcript"]["path"]).records
    assert len(records) == 16 and {len(r.turns) for r in records} == {2}  # the embedded model solves nothing
    assert rescore(entry, read_transcript(tmp_path / entry["transcript"]["path"])).records == 16
    team, first = calls[0]
    assert len(calls) == 2 and all(policies is team for policies, _ in calls)  # one call per turn, all agents
    assert set(team.members) == {"helper", "main"} and team.members["helper"].module is team.members["main"].module
    lora_b = [p for n, p in team.members["main"].module.named_parameters() if "lora_B" in n]
    assert lora_b and all(not p.any() for p in lora_b), "never trained: B = 0, so the base model's output"
    env = make("coop_coding-v0")
    obs, _ = env.reset(seed=0, options={"task_id": env.task_ids("test")[0]})
    for agent in ("helper", "main"):  # turn 1 is the parallel protocol's prompt
        assert (
            first[agent][0].messages
            == ChatPrompt.from_text(obs[agent]["prompt"], env.role_instructions(agent)).messages
        )
    second = calls[1][1]["main"][0]
    assert len(second.messages) > len(first["main"][0].messages) and "aux" in second.messages[-1]["content"]
    replay = make("coop_coding-v0", max_turns=2)
    replay.reset(seed=0, options={"task_id": env.task_ids("test")[0]})
    o, *_ = replay.step(dict(records[0].turns[0].actions))
    assert second.messages == env_prompt(replay, o, "main").messages  # the env's feedback observation


def test_untrained_single_model_plays_a_multi_turn_env_as_the_single_agent_view(tmp_path):
    cfg = _baseline(env="coop_coding-v0", baseline="single", max_turns=2, seeds=(0,), root=tmp_path)
    entry = load_entry(evaluate(cfg).entry_path, tmp_path)
    assert entry["env"]["spec_hash"] == make("coop_coding-v0", max_turns=2).spec.spec_hash()  # the 2-turn board
    assert (
        entry["method"]["config"]["protocol"] == "single"
        and "The model revises over 2 turns" in entry["method"]["description"]
    )
    assert entry["decoding"]["max_turns"] == 2 and entry["decoding"]["max_new_tokens"] == 16  # both parts: twice 8
    assert [m["agent"] for m in entry["models"]] == [SINGLE_AGENT]
    transcript = read_transcript(tmp_path / entry["transcript"]["path"])
    assert len(transcript.records) == 16 and {len(r.turns) for r in transcript.records} == {2}
    assert all(t.actions["helper"] == "" for r in transcript.records for t in r.turns)  # all of it is main
    assert rescore(entry, transcript).records == 16


def test_single_agent_grpo_trains_and_evaluates_over_two_turns(tmp_path):
    run = _train(
        tmp_path / "solo2", env="single:coop_coding-v0", max_turns=2, max_new_tokens=6, eval_tasks=1, eval_seeds=1
    )
    assert json.loads((run / "config.json").read_text())["max_turns"] == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["breakdown/turn2/return_mean"] >= 0  # the second turn was played and trained on
    entry = load_entry(evaluate(_quick(env="coop_coding-v0", policy=str(run), root=tmp_path)).entry_path, tmp_path)
    assert entry["method"]["name"] == "Single-agent GRPO" and entry["decoding"]["max_turns"] == 2
    transcript = read_transcript(tmp_path / entry["transcript"]["path"])
    assert {len(r.turns) for r in transcript.records} == {2} and rescore(entry, transcript).records == 16


def test_multi_turn_baseline_flags_are_checked(trained_run):
    for flags, message in (
        ({"baseline": "sequential", "max_turns": 2}, "--max-turns 2 is for --baseline parallel"),
        ({"baseline": "parallel", "max_turns": 0}, "--max-turns must be >= 1"),
        ({"baseline": "parallel", "feedback": "plain"}, "--feedback .* needs --max-turns >= 2"),
    ):
        with pytest.raises(EvalError, match=message):
            _baseline(env="coop_coding-v0", **flags).validate()
    plan = plan_evaluation(_baseline(env="coop_coding-v0", baseline="parallel", max_turns=2, feedback="plain"))
    assert plan.env_kwargs == {"max_turns": 2, "feedback": "plain"}
    cfg = config_from_args(
        ["--env", "coop_coding-v0", "--baseline", "parallel", "--max-turns", "3", "--feedback", "plain"]
    )
    assert (cfg.max_turns, cfg.feedback) == (3, "plain")
    with pytest.raises(EvalError, match=r"--max-turns 2 contradicts the run: .* records 1"):
        plan_evaluation(_quick(policy=str(trained_run), max_turns=2))
    with pytest.raises(EvalError, match=r"--feedback 'plain' contradicts the run: .* records 'level'"):
        plan_evaluation(_quick(policy=str(trained_run), feedback="plain"))
    plan_evaluation(_quick(policy=str(trained_run), max_turns=1, feedback="level"))  # repeating the run's values


def test_answer_starts_reach_the_untrained_team_and_a_trained_run(trained_run, tmp_path):
    with pytest.raises(EvalError, match="--answer-start is for --baseline parallel"):
        _baseline(env="coop_coding-v0", baseline="sequential", answer_start=True).validate()
    assert config_from_args(["--env", "coop_coding-v0", "--baseline", "parallel", "--answer-start"]).answer_start
    cfg = _baseline(env="coop_coding-v0", baseline="parallel", answer_start=True, seeds=(0,), root=tmp_path)
    entry = load_entry(evaluate(cfg).entry_path, tmp_path)
    assert entry["env"]["spec_hash"] == make("coop_coding-v0", answer_start=True).spec.spec_hash()  # its own board
    assert "header" in entry["method"]["description"]
    records = read_transcript(tmp_path / entry["transcript"]["path"]).records
    env = make("coop_coding-v0")
    assert len(records) == 16
    for record in records:
        env.reset(options={"task_id": record.task_id})
        entry_point = env.current_task.fields["entry_point"]
        actions = record.turns[0].actions
        assert actions["helper"].startswith("def aux(") and actions["main"].startswith(f"def {entry_point}(")
    run = _train(tmp_path / "run", env="coop_coding-v0", answer_start=True, eval_tasks=1, eval_seeds=1)
    assert read_run(run).env_kwargs["answer_start"] is True
    played = evaluate(_quick(policy=str(run), tasks=1, root=tmp_path))
    turn = read_transcript(played.transcript_path).records[0].turns[0]
    assert turn.actions["helper"].startswith("def aux(") and turn.actions["main"].startswith("def ")
    with pytest.raises(EvalError, match=r"--answer-start False contradicts the run: .* records True"):
        plan_evaluation(_quick(policy=str(run), answer_start=False))
    with pytest.raises(EvalError, match=r"--answer-start True contradicts the run: .* records False"):
        plan_evaluation(_quick(policy=str(trained_run), answer_start=True))
    with pytest.raises(EvalError, match=r"--share-aux-hint True contradicts the run: .* records False"):
        plan_evaluation(_quick(policy=str(run), share_aux_hint=True))


def test_the_shared_helper_hint_is_an_env_switch_of_every_protocol(tmp_path, monkeypatch):
    from baselines.lm.policies import Policies

    texts: list[str] = []
    original = Policies.generate
    monkeypatch.setattr(
        Policies,
        "generate",
        lambda self, prompts, *a, **k: (
            texts.extend(p.text for ps in prompts.values() for p in ps) or original(self, prompts, *a, **k)
        ),
    )
    cfg = config_from_args(["--env", "coop_coding-v0", "--baseline", "sequential", "--share-aux-hint"])
    assert cfg.share_aux_hint and plan_evaluation(cfg).env_kwargs == {"share_aux_hint": True}
    cfg = _baseline(
        env="coop_coding-v0", baseline="sequential", share_aux_hint=True, seeds=(0,), tasks=1, root=tmp_path
    )
    record = read_transcript(evaluate(cfg).transcript_path).records[0]
    env = make("coop_coding-v0", share_aux_hint=True)
    env.reset(options={"task_id": record.task_id})
    hint = f"The team agreed on this helper: {env.current_task.fields['aux_hint']}"
    assert len(texts) == 2 and all(hint in text for text in texts)  # the helper's prompt, then main's


# ----- trained runs: evaluation reproduces training ------------------------------------------------------------------
def test_heldout_mode_reproduces_the_runs_final_evaluation(trained_run, tmp_path):
    result = evaluate(_quick(policy=str(trained_run), heldout=True, root=tmp_path))
    final = json.loads((trained_run / "eval.jsonl").read_text().splitlines()[-1])
    assert final["step"] == 1 and final["eval/joint_mean"] > 0  # a number that can differ
    assert result.heldout is not None and result.heldout["eval/joint_mean"] == final["eval/joint_mean"]
    assert result.heldout["eval/example"] == final["eval/example"] and result.reproduced
    records = read_transcript(result.transcript_path).records
    assert sorted({r.seed for r in records}) == [EVAL_SEED, EVAL_SEED + 1] and len(records) == 2 * 2
    with pytest.raises(EvalError, match="--heldout uses the run's own evaluation seeds"):
        evaluate(_quick(policy=str(trained_run), heldout=True, seeds=(0,), root=tmp_path))


def test_held_out_episodes_share_one_feedback_model(monkeypatch):
    from baselines.heldout import play_heldout
    from baselines.lm.policies import Policies
    from llm_coop_envs import feedback

    loads: list[int] = []
    original = feedback.HFFeedbackModel._load
    monkeypatch.setattr(feedback.HFFeedbackModel, "_load", lambda self: loads.append(id(self)) or original(self))
    factory_calls: list[int] = []

    def factory():
        factory_calls.append(1)
        return make("coop_coding-v0", max_turns=2, feedback="hf:embedded")

    policies = Policies(["helper", "main"], None, "lora")
    task_ids = make("coop_coding-v0").task_ids("test")[:3]
    run = play_heldout(factory, policies, task_ids, SamplingConfig(8), seed=0)
    assert len(run.episodes) == 3 and {len(e.turns) for e in run.episodes} == {2}  # feedback was asked for
    assert factory_calls == [1] and len(loads) == 1, "one env built, its feedback model loaded once"
    assert len({id(e.env) for e in run.episodes}) == 3  # each episode its own env (a clone)


def test_each_lora_agent_gets_its_own_base_model(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    other = tmp_path / "other-base"
    model = AutoModelForCausalLM.from_pretrained(str(EMBEDDED_DIR))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(1.5)
    model.save_pretrained(other)
    AutoTokenizer.from_pretrained(str(EMBEDDED_DIR)).save_pretrained(other)
    run = _train(tmp_path / "lora", finetune="lora", agent_models=(str(EMBEDDED_DIR), str(other)), eval_seeds=1)
    loaded = load_run_policies(read_run(run), ["summary", "elaboration"], "cpu")
    assert [m["model"] for m in loaded.models] == [str(EMBEDDED_DIR), str(other)]
    assert loaded.policies.members["summary"].module is not loaded.policies.members["elaboration"].module
    result = evaluate(_quick(policy=str(run), heldout=True, root=tmp_path))
    assert result.reproduced and result.heldout is not None and result.recorded is not None
    assert result.heldout["eval/example"] == result.recorded["eval/example"]  # the same texts, agent by agent


def test_policy_eval_takes_env_kwargs_prompt_format_and_decoding_from_the_run(trained_run, tmp_path):
    changes = dict(max_turns=2, chat_template=True, max_new_tokens=7, temperature=0.5, top_k=5, top_p=0.9)
    run = _copy_run(trained_run, tmp_path / "run", **changes)
    cfg = config_from_args(["--policy", str(run)])
    assert (cfg.env, cfg.split, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p) == (None,) * 6
    plan = plan_evaluation(cfg)
    assert plan.env == "coop_writing-v0" and plan.split == "test" and plan.protocol == "parallel"
    assert plan.env_kwargs == {"max_turns": 2, "dataset": "bundled"} and plan.chat_template
    assert plan.sampling == SamplingConfig(max_new_tokens=7, temperature=0.5, top_k=5, top_p=0.9)
    assert read_run(run).make_env_factory()().max_turns == 2
    assert entry_env_kwargs(plan.env, plan.env_kwargs) == {"max_turns": 2}  # defaults keep the registered spec
    with pytest.raises(ValueError, match="chat_template is on but no agent's tokenizer has a chat template"):
        load_run_policies(read_run(run), ["summary", "elaboration"], "cpu")  # the run's flag reaches the policies
    plan_evaluation(_quick(policy=str(run), env="coop_writing-v0", temperature=0.5, max_new_tokens=7))  # agree
    contradictions = [
        ({"env": "coop_coding-v0"}, r"--env 'coop_coding-v0' contradicts the run: .*config.json records"),
        ({"max_new_tokens": 8}, r"--max-new-tokens 8 contradicts the run: .* records 7"),
        ({"temperature": 1.0}, r"--temperature 1.0 contradicts"),
        ({"top_k": 0}, r"--top-k 0 contradicts"),
        ({"top_p": 1.0}, r"--top-p 1.0 contradicts"),
        ({"split": "train"}, r"--split 'train' contradicts"),
    ]
    for flags, message in contradictions:
        with pytest.raises(EvalError, match=message):
            plan_evaluation(_quick(policy=str(run), **flags))


def test_seeds_are_training_seeds_with_a_template_and_sampling_seeds_without(trained_run, tmp_path):
    _copy_run(trained_run, tmp_path / "run-seed3")
    _copy_run(trained_run, tmp_path / "run-seed4", seed=4)  # same weights, recorded as seed 4
    template = str(tmp_path / "run-seed{seed}")
    trained = load_entry(evaluate(_quick(policy=template, seeds=(3, 4), root=tmp_path)).entry_path, tmp_path)
    assert trained["seed_kind"] == "training" and trained["training_seeds"] == [3, 4] and trained["train_steps"] == 1
    assert trained["decoding"]["max_new_tokens"] == 40 and trained["decoding"]["max_turns"] == 1
    assert set(trained["method"]["config"]["weights_sha256"]) == {"3", "4"}
    assert all(len(h) == 64 for h in trained["method"]["config"]["weights_sha256"]["3"].values())
    sampled = load_entry(evaluate(_quick(policy=str(trained_run), seeds=(0, 1), root=tmp_path)).entry_path, tmp_path)
    assert sampled["seed_kind"] == "sampling" and sampled["training_seeds"] == [3] and sampled["seeds"] == [0, 1]
    assert sampled["entry_id"] != trained["entry_id"] and "--1steps--" in sampled["entry_id"]
    models = {m["agent"]: m for m in sampled["models"]}
    assert set(models) == {"summary", "elaboration"} and all(len(m["model_hash"]) == 64 for m in models.values())
    _copy_run(trained_run, tmp_path / "run-seed5")  # config.json says seed 3
    with pytest.raises(EvalError, match=r"run-seed5: trained with seed 3, but '\{seed\}' in --policy names it seed 5"):
        plan_evaluation(_quick(policy=template, seeds=(3, 5)))
    _copy_run(trained_run, tmp_path / "run-seed6", seed=6, lr=0.5)
    with pytest.raises(EvalError, match=r"differ in config field 'lr'"):
        plan_evaluation(_quick(policy=template, seeds=(3, 6)))


def test_a_run_without_config_json_is_refused(trained_run, tmp_path):
    shutil.copytree(trained_run / "final", tmp_path / "bare" / "final")
    with pytest.raises(EvalError, match=r"bare: no config.json"):
        evaluate(_quick(policy=str(tmp_path / "bare"), root=tmp_path))


def test_method_name_family_and_description_come_from_the_algorithm_class(trained_run, tmp_path, monkeypatch):
    from baselines.independent import IndependentGRPO
    from baselines.magrpo import MAGRPO

    (tmp_path / "my_algo.py").write_text(
        "from baselines.magrpo import MAGRPO\n\n\n"
        "class Mine(MAGRPO):\n    display_name = 'My method'\n    family = 'other'\n    description = 'Mine.'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    expected = {
        "magrpo": ("MAGRPO", "joint-reward", MAGRPO.description),
        "independent": ("Independent GRPO", "independent-reward", IndependentGRPO.description),
        "my_algo:Mine": ("My method", "other", "Mine."),
    }
    for algo, (name, family, description) in expected.items():
        run = _copy_run(trained_run, tmp_path / _slug(algo), algo=algo)
        cfg = _quick(policy=str(run))
        method = method_record(cfg, plan_evaluation(cfg))
        assert (method["name"], method["family"]) == (name, family) and method["description"].startswith(description)
    run = _copy_run(trained_run, tmp_path / "unknown", algo="telepathy")
    with pytest.raises(EvalError, match=r"config.json: field 'algo': algorithm 'telepathy' unknown"):
        method_record(_quick(policy=str(run)), plan_evaluation(_quick(policy=str(run))))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text)


def test_single_agent_grpo_trains_on_the_single_view_and_evaluates_as_single(tmp_path):
    run = _train(tmp_path / "solo", env="single:coop_writing-v0", max_new_tokens=6, eval_tasks=1, eval_seeds=1)
    assert (run / "final" / "single").is_dir()
    result = evaluate(_quick(env="coop_writing-v0", policy=str(run), root=tmp_path))
    entry = load_entry(result.entry_path, tmp_path)
    assert entry["method"]["name"] == "Single-agent GRPO" and entry["method"]["config"]["protocol"] == "single"
    assert entry["env"]["id"] == "coop_writing-v0" and entry["decoding"]["max_new_tokens"] == 6  # the run's budget
    transcript = read_transcript(tmp_path / entry["transcript"]["path"])
    assert set(transcript.records[0].turns[0].actions) == {"summary", "elaboration"}  # split into the env's actions
    assert rescore(entry, transcript).records == 20


def test_root_defaults_to_the_current_directory_and_the_paths_are_printed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["--env", "coop_writing-v0", "--baseline", "parallel", "--tasks", "1", "--max-new-tokens", "4"]
    with pytest.raises(SystemExit, match=r"llm-coop eval: --root: no leaderboards/ directory in"):
        main([*argv, "--no-progress"])
    (tmp_path / "leaderboards").mkdir()
    assert main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"transcript written to {tmp_path / 'leaderboards' / 'partial'}" in out


def test_cli_dispatches_eval_and_leaderboard(capsys):
    from baselines.cli import main as cli

    with pytest.raises(SystemExit) as done:
        cli(["leaderboard", "--help"])
    assert done.value.code == 0 and "build" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli(["eval", "--env", "coop_writing-v0"])  # --policy or --baseline is required
    assert "one of the arguments --policy --baseline is required" in capsys.readouterr().err


def test_cli_flags_and_errors():
    cfg = config_from_args(["--env", "coop_coding-v0", "--policy", "runs/c0", "--seeds", "0", "1", "2", "3", "4"])
    assert cfg.seeds == (0, 1, 2, 3, 4) and cfg.policy == "runs/c0"
    assert cfg.command == "llm-coop eval --env coop_coding-v0 --policy runs/c0 --seeds 0 1 2 3 4"
    with pytest.raises(SystemExit):
        config_from_args(["--env", "coop_writing-v0", "--baseline", "telepathy"])
    with pytest.raises(EvalError, match="--model is for --baseline"):
        _quick(env="coop_writing-v0", policy="runs/x", model="m").validate()
    with pytest.raises(EvalError, match="--baseline needs --env"):
        _quick(baseline="parallel").validate()
    with pytest.raises(EvalError, match="each once"):
        _quick(policy="runs/x", seeds=(1, 1)).validate()
    with pytest.raises(EvalError, match="without '\\{seed\\}'"):
        _quick(policy="runs/x-{seed}", heldout=True).validate()
    with pytest.raises(EvalError, match="--pass-k 5 needs --samples >= 5"):
        config_from_args(["--env", "coop_coding-v0", "--baseline", "parallel", "--pass-k", "1", "5"]).validate()
    config_from_args(
        ["--env", "coop_coding-v0", "--baseline", "parallel", "--pass-k", "1", "5", "--samples", "5"]
    ).validate()


def test_the_training_runners_held_out_evaluation_is_baselines_heldout(monkeypatch):
    from baselines import heldout, training
    from baselines.config import RunConfig
    from baselines.lm.policies import Policies

    played: list[int] = []
    original = heldout.play_heldout
    monkeypatch.setattr(heldout, "play_heldout", lambda *a, **k: played.append(a[4]) or original(*a, **k))
    policies = Policies(["summary", "elaboration"], None, "full")
    run = RunConfig(max_new_tokens=4, eval_seeds=2)
    task_ids = make("coop_writing-v0").task_ids("test")[:2]
    row = training.run_eval(lambda: make("coop_writing-v0"), policies, task_ids, run)
    seeds = list(played)  # the call below appends to `played` again
    assert seeds == heldout.eval_seeds(2)
    assert row == heldout.heldout_eval(lambda: make("coop_writing-v0"), policies, task_ids, run.sampling(), seeds)
