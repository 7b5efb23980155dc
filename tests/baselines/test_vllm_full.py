"""Full fine-tuning with vLLM rollouts against a real vLLM server (marked vllm; ``bash run.sh test-vllm``): the
engine reloads the trainer's weights in place after ``sync()``. Its own module, so that its server starts
after the LoRA module's has stopped (two CPU servers at once would reserve too much of the host's RAM)."""

from __future__ import annotations

import pytest
import torch
from test_vllm_rollout import SAMPLING, SEED, SMOL, _vllm_python

from baselines.lm.policies import Policies
from baselines.lm.vllm_rollout import VLLMSampler, VLLMSettings
from baselines.rollout import env_prompt
from llm_coop_envs import make

pytestmark = pytest.mark.vllm


def _gap(policies: Policies, c) -> float:
    with torch.no_grad():
        ours = policies.token_logprobs("solo", c)
    return float((ours - c.engine_logprobs).abs()[c.mask].max())


def test_full_fine_tuning_reloads_the_trainers_weights_into_the_engine():
    python = _vllm_python()
    torch.manual_seed(0)
    policies = Policies(["solo"], SMOL, "full", chat_template=True)
    env = make("coop_coding-v0")
    obs, _ = env.reset(seed=0)
    prompts = {"solo": [env_prompt(env, obs, "main")]}
    with VLLMSampler(policies, VLLMSettings(python=python), seed=0) as sampler:
        torch.manual_seed(SEED)
        before = sampler.generate(prompts, SAMPLING, repeats=2)["solo"]
        assert _gap(policies, before) < 1e-3
        with torch.no_grad():  # a different policy: noise on every attention output projection
            noise = torch.Generator().manual_seed(0)
            for name, param in policies.members["solo"].module.named_parameters():
                if name.endswith("o_proj.weight"):
                    param.add_(torch.randn(param.shape, generator=noise) * 0.05)
        sampler.sync()
        torch.manual_seed(SEED)
        after = sampler.generate(prompts, SAMPLING, repeats=2)["solo"]
    assert not torch.equal(after.sequences, before.sequences), "the reloaded engine samples from the new weights"
    assert _gap(policies, after) < 1e-3, "the engine's log-probs are the perturbed model's"
