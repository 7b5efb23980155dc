"""Policies, rollouts, updates, determinism, kill-and-resume and the CLI, on the ~1M embedded model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from toy_env import ToyEnv, make_toy_env

from baselines.algorithm import train_step
from baselines.config import RunConfig, preset
from baselines.independent import IndependentGRPO
from baselines.lm.embedded import EMBEDDED_DIR
from baselines.lm.policies import Completions, Policies, SamplingConfig
from baselines.magrpo import MAGRPO, MAGRPOConfig
from baselines.objectives import masked_sum
from baselines.training import train

ALGOS = {"magrpo": MAGRPO, "independent": IndependentGRPO}


def small_cfg(**kw) -> RunConfig:
    base = dict(num_generations=3, max_new_tokens=12, eval_tasks=1, eval_seeds=1, eval_every=2, save_every=1)
    return RunConfig(**{**base, **kw})


def magrpo_step(env, obs, policies, optimizers, run: RunConfig) -> dict:
    return train_step(MAGRPO(MAGRPOConfig()), env, obs, policies, optimizers, run)


def assert_documented(row: dict) -> None:
    """Every key of a metrics row matches a key of the Metrics table in baselines/README.md (``<agent>``,
    ``<key>``, ``<t>`` and ``<module>`` stand for a name, any breakdown key, a turn and a module)."""
    import re

    readme = (Path(__file__).parents[2] / "baselines" / "README.md").read_text()
    table = readme.split("## Metrics", 1)[1].split("\n\n", 2)[1]
    names = {"agent": r"\w+", "key": r"\w+", "t": r"\d+", "module": r"\w+"}
    patterns = []
    for line in table.splitlines()[2:]:
        key = line.split("|")[1].strip().strip("`")
        parts = re.split(r"<(\w+)>", key)
        patterns.append("".join(re.escape(x) if i % 2 == 0 else names[x] for i, x in enumerate(parts)))
    undocumented = [k for k in row if not any(re.fullmatch(p, k) for p in patterns)]
    assert patterns and not undocumented, f"keys missing from the Metrics table of baselines/README.md: {undocumented}"


def snapshot(policies: Policies) -> dict[str, torch.Tensor]:
    out = {}
    for _agent, m in policies.members.items():
        for name, p in m.module.named_parameters():
            out[f"{id(m.module)}/{name}"] = p.detach().clone()
    return out


@pytest.mark.parametrize("algo", sorted(ALGOS))
@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_update_changes_every_trainable_parameter_and_no_frozen_one(algo, finetune):
    torch.manual_seed(0)
    algorithm = ALGOS[algo](MAGRPOConfig())
    cfg = small_cfg(finetune=finetune, lr=1e-3)
    env = ToyEnv()
    policies = Policies(env.possible_agents, None, finetune, lora_r=4)
    trainable = {n for a in env.possible_agents for n, p in _named(policies, a)}
    optimizers = {a: torch.optim.AdamW(policies.parameters(a), lr=cfg.lr) for a in env.possible_agents}
    before = snapshot(policies)
    # LoRA B starts at zero, so A gets its first gradient on the second update
    for step in range(1 if finetune == "full" else 2):
        obs, _ = env.reset(options={"task_id": f"train-{step}"})
        stats = train_step(algorithm, env, obs, policies, optimizers, cfg)
        assert stats["advantage/abs_mean"] > 0
    after = snapshot(policies)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {k.split("/", 1)[1] for k in changed} >= {n.split("/", 1)[1] for n in trainable}
    if finetune == "full":
        assert changed == set(before), "every full-fine-tuned tensor changes"
    else:
        assert all(("lora_" in k) for k in changed), "the frozen base must not change"
        assert len(changed) == len(trainable)


def _named(policies: Policies, agent: str):
    ids = {id(p) for p in policies.parameters(agent)}
    m = policies.members[agent]
    return [(f"{id(m.module)}/{n}", p) for n, p in m.module.named_parameters() if id(p) in ids]


def test_lora_agents_have_disjoint_adapters_on_one_base():
    policies = Policies(["first", "second"], None, "lora", lora_r=4)
    assert policies.members["first"].module is policies.members["second"].module
    a = {id(p) for p in policies.parameters("first")}
    b = {id(p) for p in policies.parameters("second")}
    assert a and b and not a & b


def test_generate_one_call_for_shared_base_and_texts_stop_at_eos(monkeypatch):
    import baselines.lm.policies as pol_mod

    torch.manual_seed(1)
    policies = Policies(["first", "second"], None, "lora", lora_r=4)
    calls = []
    original = pol_mod.sample
    monkeypatch.setattr(pol_mod, "sample", lambda *a, **k: calls.append(1) or original(*a, **k))
    out = policies.generate(
        {"first": ["Hello there."], "second": ["Another prompt, longer."]}, SamplingConfig(max_new_tokens=10), repeats=3
    )
    assert len(calls) == 1
    for c in out.values():
        assert c.sequences.shape[0] == 3 and len(c.texts) == 3
        assert (c.mask.sum(1) >= 1).all()
        T = c.mask.shape[1]
        pad = policies.members["first"].tokenizer.pad_token_id
        assert bool((c.sequences[:, -T:][~c.mask] == pad).all()), "rows are padded after their EOS"


def test_top_k_and_top_p_filters():
    from baselines.lm.sampling import pick_token as _pick

    torch.manual_seed(0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    tok, _ = _pick(logits, SamplingConfig(top_k=2))
    assert set(tok.tolist()) == {0, 1}
    tok, lp = _pick(logits, SamplingConfig(top_p=0.7))  # keeps 0.5 and 0.3 (0.5 < 0.7)
    assert set(tok.tolist()) == {0, 1}
    assert torch.allclose(lp[tok == 0][:1], torch.log(torch.tensor([0.5 / 0.8])))
    tok, _ = _pick(logits[:1], SamplingConfig(temperature=0))
    assert tok.tolist() == [0]


def test_full_finetune_with_a_different_model_per_agent(tmp_path):
    from transformers import AutoModelForCausalLM, Qwen2Config

    from baselines.lm.loading import load_tokenizer

    tok = load_tokenizer(str(EMBEDDED_DIR))
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    policies = Policies(["first", "second"], [str(EMBEDDED_DIR), str(tmp_path / "tiny")], "full")
    out = policies.generate({"first": ["Hi."], "second": ["Hi."]}, SamplingConfig(max_new_tokens=5), repeats=2)
    c = out["second"]
    ours = masked_sum(policies.token_logprobs("second", c), c.mask)  # (2,)
    plain = Completions(c.sequences, c.prompt_mask, c.mask, c.texts)
    for path, same in ((tmp_path / "tiny", True), (EMBEDDED_DIR, False)):
        alone = Policies(["x"], str(path), "full")
        theirs = masked_sum(alone.token_logprobs("x", plain), c.mask)
        assert torch.allclose(ours, theirs, atol=1e-4) is same, f"agent 'second' must be scored by {path.name} only"


def test_kl_to_reference_is_zero_at_start():
    torch.manual_seed(0)
    for finetune in ("lora", "full"):
        policies = Policies(["first", "second"], None, finetune, lora_r=4, need_reference=True)
        out = policies.generate({"first": ["Hello."]}, SamplingConfig(max_new_tokens=6), repeats=2)["first"]
        cur = policies.token_logprobs("first", out)
        ref = policies.token_logprobs("first", out, reference=True)
        assert torch.allclose(cur, ref, atol=1e-5)


def test_multi_turn_tree_and_cross_mode_run():
    torch.manual_seed(0)
    env = ToyEnv(max_turns=2)
    policies = Policies(env.possible_agents, None, "full")
    opts = {a: torch.optim.AdamW(policies.parameters(a), lr=1e-4) for a in env.possible_agents}
    obs, _ = env.reset(options={"task_id": "train-0"})
    stats = magrpo_step(env, obs, policies, opts, small_cfg(num_generations=2, max_turns=2, early_termination=None))
    assert stats["tree/nodes"] == 1 + 2  # aligned: 1 + G nodes for H = 2
    assert {"breakdown/words_mean", "breakdown/empty_mean", "breakdown/turn2/words_mean"} <= set(stats)
    assert not any("note" in key for key in stats), "text in a breakdown is not averaged"
    assert_documented(stats)
    from baselines.rollout import rollout_tree

    env1 = ToyEnv(max_turns=1)
    obs, _ = env1.reset(options={"task_id": "train-1"})
    root = rollout_tree(env1, obs, policies, small_cfg(num_generations=3, joint_mode="cross").rollout_settings())
    assert sorted(root.actions) == [(i, j) for i in range(3) for j in range(3)], "cross: every G x G pair once"
    assert root.rewards.shape == (9, 3) and not root.children[0]


def test_tree_levels_are_sampled_in_one_call_each_and_nodes_get_their_own_rows():
    from baselines.rollout import RolloutSettings, rollout_tree, walk

    torch.manual_seed(0)
    env = ToyEnv(max_turns=3)
    policies = Policies(env.possible_agents, None, "full")
    calls: list[dict[str, list[str]]] = []
    original = policies.generate
    policies.generate = lambda prompts, *a, **k: calls.append(prompts) or original(prompts, *a, **k)  # type: ignore[method-assign]
    obs, _ = env.reset(options={"task_id": "train-0"})
    root = rollout_tree(env, obs, policies, RolloutSettings(2, "aligned", 3, None, SamplingConfig(8)))
    nodes = walk(root)
    assert len(nodes) == 1 + 2 + 4 and len(calls) == 3, "one generate call per tree level"
    assert [len(c[env.possible_agents[0]]) for c in calls] == [1, 2, 4]
    tok = policies.members[env.possible_agents[0]].tokenizer
    for level, members in ((1, nodes[1:3]), (2, nodes[3:])):
        for i, node in enumerate(members):
            for agent, c in node.completions.items():
                assert c.sequences.shape[0] == 2 and c.shared_prompt and bool(c.prompt_mask.all())
                prompt = tok.decode(c.sequences[0, : c.prompt_width])
                assert prompt == tok.decode(tok(calls[level][agent][i].text)["input_ids"]), (level, i, agent)


def _rows(path: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if not k.startswith("time/")}
        for line in path.read_text().splitlines()
    ]


def test_same_seed_gives_identical_metrics_and_resume_matches(tmp_path):
    full = small_cfg(steps=4, output_dir=tmp_path / "a", seed=3)
    train(full, "magrpo", progress=False, make_env=make_toy_env)
    again = small_cfg(steps=4, output_dir=tmp_path / "b", seed=3)
    train(again, "magrpo", progress=False, make_env=make_toy_env)
    assert _rows(tmp_path / "a" / "metrics.jsonl") == _rows(tmp_path / "b" / "metrics.jsonl")
    # killed after the step-2 checkpoint, in the middle of writing step 3
    part = small_cfg(steps=2, output_dir=tmp_path / "c", seed=3)
    train(part, "magrpo", progress=False, make_env=make_toy_env)
    with open(tmp_path / "c" / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 3, "reward/joint_mean": 0.12')
    resumed = small_cfg(steps=4, output_dir=tmp_path / "c", seed=3, resume=True)
    train(resumed, "magrpo", progress=False, make_env=make_toy_env)
    assert _rows(tmp_path / "a" / "metrics.jsonl") == _rows(tmp_path / "c" / "metrics.jsonl")
    final_a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["policies"]
    final_c = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=False)["policies"]
    for agent in final_a:
        for k in final_a[agent]:
            assert torch.equal(final_a[agent][k], final_c[agent][k])
    assert (tmp_path / "a" / "reward_curve.png").stat().st_size > 0


def test_final_lora_adapters_load_with_peft(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = small_cfg(steps=1, output_dir=tmp_path / "run", finetune="lora", lora_r=4)
    train(cfg, "independent", progress=False, make_env=make_toy_env)
    base = AutoModelForCausalLM.from_pretrained(str(EMBEDDED_DIR))
    model = PeftModel.from_pretrained(base, str(tmp_path / "run" / "final" / "first"))
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="num_generations"):
        RunConfig(num_generations=0).validate()
    with pytest.raises(ValueError, match="joint_mode"):
        RunConfig(joint_mode="cross", max_turns=2).validate()


def test_presets_apply():
    cfg = preset("paper-writing")
    assert (cfg.lr, cfg.num_generations, cfg.max_new_tokens, cfg.finetune) == (5e-6, 4, 256, "full")
    with pytest.raises(ValueError, match="preset"):
        preset("nope")


def _registered_ids() -> list[str]:
    from llm_coop_envs import registry_ids

    return registry_ids()


@pytest.mark.parametrize("env_id", _registered_ids())
def test_cli_train_smoke_on_every_registered_env(env_id, tmp_path, capsys):
    from baselines.cli import main

    out = tmp_path / "run"
    main(
        [
            "train",
            "--env",
            env_id,
            "--algo",
            "magrpo",
            "--steps",
            "1",
            "--seed",
            "0",
            "--output-dir",
            str(out),
            "--num-generations",
            "2",
            "--max-new-tokens",
            "8",
            "--eval-tasks",
            "1",
            "--eval-seeds",
            "1",
            "--no-progress",
        ]
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and {"step", "reward/joint_mean", "time/step_s"} <= set(rows[0])
    assert_documented(rows[0])
    assert (out / "final").is_dir() and (out / "reward_curve.png").exists()


def test_cli_rejects_bad_field():
    from baselines.cli import main

    with pytest.raises(SystemExit, match="num_generations"):
        main(["train", "--num-generations", "0", "--no-progress"])


class SoloEnv(ToyEnv):
    possible_agents = ["first"]


def test_single_agent_grpo_is_magrpo_with_one_agent():
    torch.manual_seed(0)
    env = SoloEnv()
    policies = Policies(env.possible_agents, None, "full")
    before = snapshot(policies)
    opts = {"first": torch.optim.AdamW(policies.parameters("first"), lr=1e-3)}
    obs, _ = env.reset(options={"task_id": "train-0"})
    stats = magrpo_step(env, obs, policies, opts, small_cfg(num_generations=4))
    assert stats["advantage/abs_mean"] > 0 and "loss/first" in stats
    after = snapshot(policies)
    assert all(not torch.equal(before[k], after[k]) for k in before)


def test_breakdown_means_count_how_often_main_calls_aux():
    from baselines.rollout import breakdown_means
    from llm_coop_envs import make

    env = make("coop_coding-v0")
    env.reset(seed=0, options={"task_id": "coop_code/005"})
    helper = "def aux(s):\n    return [(c, s.count(c)) for c in s]"
    mains = [
        "def longest_run_char(s):\n    return max(aux(s), key=lambda p: p[1])",
        "def longest_run_char(s):\n    pass",
    ]
    infos = [env.clone().step({"helper": helper, "main": main})[4] for main in mains]
    means = breakdown_means(infos)
    assert means["calls_aux"] == 0.5 and means["aux_defined"] == 1.0
    expected = sum(i["main"]["breakdown"]["cooperation"] for i in infos) / 2
    assert expected > 0 and means["cooperation"] == pytest.approx(expected)
    assert "syntax_error" not in means and "visible_tests" not in means
