"""The vLLM rollout backend against a real vLLM server on SmolLM2-135M-Instruct with two LoRA adapters
(marked vllm: needs ``$LLM_COOP_VLLM_PYTHON``, an interpreter with vllm, e.g. the one ``bash run.sh vllm-env``
builds; run with ``bash run.sh test-vllm``). One server for the whole module (about a minute to start).
Skipped without the interpreter, unless ``LLM_COOP_REQUIRE_VLLM=1``, which makes that a failure."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
import torch

from baselines.config import RunConfig
from baselines.lm.completions import Completions
from baselines.lm.policies import Policies, SamplingConfig
from baselines.lm.vllm_rollout import VLLM_ENV_COMMAND, VLLM_PYTHON_ENV, VLLMSampler, VLLMSettings
from baselines.rollout import env_prompt
from baselines.training import train
from llm_coop_envs import make

pytestmark = pytest.mark.vllm
SMOL = "smollm2-135m-instruct"
SAMPLING = SamplingConfig(max_new_tokens=24, temperature=0.7, top_p=0.9, top_k=50)  # SmolLM2's defaults
SEED = 1234


def _vllm_python() -> str:
    python = os.environ.get(VLLM_PYTHON_ENV)
    if python:
        return python
    reason = f"{VLLM_PYTHON_ENV} is not set (an interpreter with vllm; build one with `{VLLM_ENV_COMMAND}`)"
    if os.environ.get("LLM_COOP_REQUIRE_VLLM") == "1":
        pytest.fail(f"LLM_COOP_REQUIRE_VLLM=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def sampler() -> Iterator[VLLMSampler]:
    python = _vllm_python()
    torch.manual_seed(0)
    policies = Policies(["helper", "main"], SMOL, "lora", chat_template=True)
    with VLLMSampler(policies, VLLMSettings(python=python), seed=0) as s:
        yield s


@pytest.fixture(scope="module")
def prompts() -> dict[str, list]:
    env = make("coop_coding-v0")
    obs, _ = env.reset(seed=0)
    other = make("coop_coding-v0")
    obs2, _ = other.reset(seed=1, options={"task_id": other.task_ids("train")[1]})
    helper = [env_prompt(env, obs, "helper"), env_prompt(other, obs2, "helper")]
    return {"helper": helper, "main": [env_prompt(env, obs, "main")]}


def _sample(sampler: VLLMSampler, prompts: dict[str, list]) -> dict[str, Completions]:
    torch.manual_seed(SEED)
    return sampler.generate(prompts, SAMPLING, repeats=2)


@pytest.fixture(scope="module")
def first(sampler, prompts) -> dict[str, Completions]:
    """The untrained agents' samples under seed SEED (two helper prompts, one main prompt, 2 repeats)."""
    return _sample(sampler, prompts)


def _completion(c: Completions) -> torch.Tensor:
    return c.sequences[:, c.prompt_width :]


def test_completions_are_well_formed_and_the_trainer_scores_them_as_the_engine_did(
    sampler, prompts, first, record_property
):
    p = sampler.policies
    gaps = []
    for agent, c in first.items():
        ids, attn = p._encode(agent, prompts[agent])
        rows = 2 * len(prompts[agent])
        assert c.sequences.shape[0] == rows and c.shared_prompt == (agent == "main") and c.prompt_state is None
        assert torch.equal(c.sequences[:, : ids.shape[1]], ids.repeat_interleave(2, dim=0))
        assert torch.equal(c.prompt_mask, attn.repeat_interleave(2, dim=0))
        completion, eos = _completion(c), p.members[agent].eos_ids
        assert completion.shape[1] <= SAMPLING.max_new_tokens
        for row, m in zip(completion, c.mask, strict=True):
            n = int(m.sum())
            assert n == SAMPLING.max_new_tokens or int(row[n - 1]) in eos  # the stop token is in the completion
        assert c.texts == p.answers(agent, prompts[agent], 2, completion, c.mask) and any(c.texts)
        assert c.sample_logprobs is not None and c.engine_logprobs is not None
        assert torch.equal(c.sample_logprobs, c.engine_logprobs)
        assert bool((c.engine_logprobs[~c.mask] == 0).all()) and bool((c.engine_logprobs[c.mask] <= 0).all())
        with torch.no_grad():
            ours = p.token_logprobs(agent, c)
        gap = (ours - c.engine_logprobs).abs()[c.mask]
        gaps.append(gap)
    gap = torch.cat(gaps)
    record_property("logprob_gap_max", float(gap.max()))
    record_property("logprob_gap_mean", float(gap.mean()))
    print(
        f"\nlog-prob gap trainer vs vLLM: max {float(gap.max()):.2e}, mean {float(gap.mean()):.2e} ({gap.numel()} tokens)"
    )
    assert float(gap.max()) < 1e-3  # both float32; vLLM's raw log-probs, no temperature


def test_the_same_seed_samples_the_same_responses(sampler, prompts, first):
    again = _sample(sampler, prompts)
    for agent, c in first.items():
        assert torch.equal(again[agent].sequences, c.sequences), agent
        assert torch.allclose(again[agent].engine_logprobs, c.engine_logprobs, atol=1e-4)


def test_each_agent_samples_from_its_own_adapter_and_sync_pushes_it(sampler, prompts, first):
    p = sampler.policies
    saved = p.state_dict("helper")
    try:
        with torch.no_grad():
            for name, param in p.members["helper"].module.named_parameters():
                if ".helper." in name and "lora_B" in name:
                    param.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(0))
        sampler.sync()
        changed = _sample(sampler, prompts)
    finally:
        p.load_state_dict("helper", saved)
        sampler.sync()
    assert not torch.equal(changed["helper"].sequences, first["helper"].sequences)
    assert torch.equal(changed["main"].sequences, first["main"].sequences)  # main's adapter was not touched
    with torch.no_grad():
        ours = p.token_logprobs("helper", changed["helper"])  # restored weights: the old policy
    c = changed["helper"]
    assert float((ours - c.engine_logprobs).abs()[c.mask].max()) > 1e-2  # the engine did use the new adapter


def test_a_short_training_run_samples_with_vllm(sampler, tmp_path):
    run = RunConfig(
        env="coop_coding-v0",
        model=SMOL,
        chat_template=True,
        steps=2,
        num_generations=2,
        max_new_tokens=24,
        temperature=0.7,
        top_p=0.9,
        top_k=50,
        lr=1e-4,
        eval_tasks=1,
        eval_seeds=1,
        eval_every=0,
        output_dir=tmp_path,
        rollout_backend="vllm",
        vllm_url=sampler.slots[0].engine.url,  # type: ignore[attr-defined]
    )
    summary = train(run, "magrpo", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and summary["steps"] == 2
    for agent in ("helper", "main"):
        gaps = [r[f"rollout/logprob_gap_{agent}"] for r in rows]
        assert all(g < 1e-3 for g in gaps), gaps  # the engine sampled from the trainer's current weights
    assert (tmp_path / "final" / "helper" / "adapter_config.json").is_file()
