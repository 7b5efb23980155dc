"""The embedded model's build: a miniature build is reproducible byte for byte and loads as a policy."""

from __future__ import annotations

import hashlib
import json

from baselines.lm.embedded import BuildConfig, pretrain
from baselines.lm.policies import Policies, SamplingConfig

TINY = BuildConfig(
    corpus_chars=40_000, vocab_size=300, hidden_size=32, num_layers=1, intermediate_size=64, seq_len=64, steps=3
)


def test_a_miniature_build_is_reproducible_and_loads(tmp_path):
    digests = []
    for name in ("a", "b"):
        info = pretrain(TINY, tmp_path / name, log=lambda _: None)
        digests.append(hashlib.sha256((tmp_path / name / "model.safetensors").read_bytes()).hexdigest())
        assert json.loads((tmp_path / name / "build_info.json").read_text())["config"]["steps"] == 3
    assert digests[0] == digests[1], "same config, same bytes"
    assert info["val_loss_after"] < info["val_loss_before"]
    policies = Policies(["first"], str(tmp_path / "a"), "full")
    out = policies.generate({"first": ["Hello."]}, SamplingConfig(max_new_tokens=4))["first"]
    assert out.sequences.shape[0] == 1 and bool(out.mask.any())
