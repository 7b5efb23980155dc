"""The runner around an algorithm: tree returns and credit reaching the advantages, loss checks, and the run
directory rules (resume, overwrite, interruption), on the scripted toy env and the ~1M embedded model."""

from __future__ import annotations

import json

import pytest
import torch
from run_helpers import ctrl_c_at_step, metric_rows
from toy_env import ToyEnv, make_toy_env

from baselines.algorithm import GroupBatch, train_step
from baselines.config import RunConfig
from baselines.independent import IndependentGRPO
from baselines.magrpo import MAGRPO, MAGRPOConfig
from baselines.objectives import NonFiniteLossError
from baselines.training import RunDirError, TrainingInterrupted, build_policies, train


def small_run(**kw) -> RunConfig:
    base = dict(num_generations=2, max_new_tokens=8, eval_tasks=1, eval_seeds=1, eval_every=0, save_every=1)
    return RunConfig(**{**base, **kw})


class Recording(MAGRPO):
    """MAGRPO that keeps every group and advantage the runner hands it."""

    def __init__(self, cfg: MAGRPOConfig) -> None:
        super().__init__(cfg)
        self.groups: list[GroupBatch] = []
        self.seen: list[dict[str, torch.Tensor]] = []

    def advantages(self, group: GroupBatch) -> dict[str, torch.Tensor]:
        out = super().advantages(group)
        self.groups.append(group)
        self.seen.append(out)
        return out


def one_step(algorithm, run: RunConfig, env=None) -> dict:
    env = env or ToyEnv(max_turns=run.max_turns)
    policies = build_policies(run, env.possible_agents)
    opts = {a: torch.optim.AdamW(policies.parameters(a), lr=1e-4) for a in env.possible_agents}
    torch.manual_seed(0)
    obs, _ = env.reset(options={"task_id": "train-0"})
    return train_step(algorithm, env, obs, policies, opts, run)


def test_discounted_child_returns_reach_the_root_advantage():
    """H = 2, aligned, G = 2: R_j = r_j + gamma * mean of child j's rewards, on both channels, and the root
    advantage is R - mean(R)."""
    algo = Recording(MAGRPOConfig())
    stats = one_step(algo, small_run(max_turns=2, gamma=0.5))
    root, children = algo.groups[0], algo.groups[1:]
    assert stats["tree/nodes"] == 3 and len(children) == 2
    expected_joint = torch.stack([root.joint_rewards[j] + 0.5 * children[j].joint_rewards.mean() for j in range(2)])
    expected_own = torch.stack(
        [root.individual_rewards[j] + 0.5 * children[j].individual_rewards.mean(dim=0) for j in range(2)]
    )
    assert torch.allclose(root.joint_returns, expected_joint)
    assert torch.allclose(root.individual_returns, expected_own)
    assert torch.allclose(algo.seen[0]["first"], expected_joint - expected_joint.mean())
    assert not torch.allclose(root.joint_returns, root.joint_rewards), "the discount must change the returns"


def test_early_termination_stops_expanding_the_tree():
    assert one_step(Recording(MAGRPOConfig()), small_run(max_turns=2, early_termination=-1.0))["tree/nodes"] == 1
    assert one_step(Recording(MAGRPOConfig()), small_run(max_turns=2, early_termination=None))["tree/nodes"] == 3


def test_cross_credit_sum_is_g_to_the_n_minus_1_times_mean_through_the_runner():
    means, sums = Recording(MAGRPOConfig(cross_credit="mean")), Recording(MAGRPOConfig(cross_credit="sum"))
    one_step(means, small_run(joint_mode="cross", num_generations=3))
    one_step(sums, small_run(joint_mode="cross", num_generations=3))
    assert len(means.groups[0].joint_actions) == 9  # G ** n
    for agent in ("first", "second"):
        assert torch.allclose(sums.seen[0][agent], 3 * means.seen[0][agent])
        assert means.seen[0][agent].abs().sum() > 0


def test_independent_grpo_trains_on_each_agents_own_return_through_the_runner():
    class RecordingIndependent(IndependentGRPO):
        def advantages(self, group):
            self.group = group
            return super().advantages(group)

    algo = RecordingIndependent(MAGRPOConfig())
    one_step(algo, small_run(num_generations=3))
    own = algo.group.individual_returns  # (G, 2)
    words = {a: [len(t.split()) for t in algo.group.samples[a].texts] for a in ("first", "second")}
    assert torch.allclose(own[:, 0], torch.tensor([1 / (1 + abs(w - 4)) for w in words["first"]], dtype=own.dtype))
    assert torch.allclose(algo.group.joint_returns, own.mean(dim=1))


def test_a_non_finite_loss_stops_training():
    class NaNAdvantages(MAGRPO):
        def advantages(self, group):
            return {a: torch.full((group.num_generations,), float("nan")) for a in group.agents}

    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        one_step(NaNAdvantages(MAGRPOConfig()), small_run())


def magrpo() -> MAGRPO:
    return MAGRPO(MAGRPOConfig())


def test_resume_without_a_checkpoint_is_an_error(tmp_path):
    with pytest.raises(RunDirError, match="no checkpoint"):
        train(small_run(steps=1, output_dir=tmp_path / "r", resume=True), magrpo(), False, make_toy_env)


@pytest.mark.parametrize(
    ("change", "field"),
    [({"env": "other-v0"}, "env"), ({"lr": 1e-3}, "lr"), ({"steps": 1}, "steps")],
)
def test_resume_checks_the_stored_config(tmp_path, change, field):
    out = tmp_path / "r"
    train(small_run(steps=2, output_dir=out), magrpo(), False, make_toy_env)
    stored = (out / "config.json").read_text()
    with pytest.raises(RunDirError, match=field):
        train(small_run(**{"steps": 2, **change, "output_dir": out, "resume": True}), magrpo(), False, make_toy_env)
    with pytest.raises(RunDirError, match="algo"):
        train(small_run(steps=3, output_dir=out, resume=True), IndependentGRPO(MAGRPOConfig()), False, make_toy_env)
    assert (out / "config.json").read_text() == stored, "a refused resume leaves the run untouched"


def test_a_run_dir_holding_another_run_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "r"
    train(small_run(steps=1, output_dir=out), magrpo(), False, make_toy_env)
    metrics = (out / "metrics.jsonl").read_text()
    with pytest.raises(RunDirError, match="already holds a run"):
        train(small_run(steps=1, output_dir=out, seed=5), magrpo(), False, make_toy_env)
    assert (out / "metrics.jsonl").read_text() == metrics
    train(small_run(steps=1, output_dir=out, seed=5, overwrite=True), magrpo(), False, make_toy_env)
    assert json.loads((out / "config.json").read_text())["seed"] == 5


def test_ctrl_c_checkpoints_and_the_resumed_run_matches(tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    train(small_run(steps=3, output_dir=whole, save_every=10), magrpo(), False, make_toy_env)
    cut = tmp_path / "cut"
    with (
        ctrl_c_at_step(monkeypatch, 2),
        pytest.raises(TrainingInterrupted, match="interrupted at step 2; continue with --resume"),
    ):
        train(small_run(steps=3, output_dir=cut, save_every=10), magrpo(), False, make_toy_env)
    assert torch.load(cut / "checkpoint.pt", weights_only=False)["step"] == 2
    train(small_run(steps=3, output_dir=cut, save_every=10, resume=True), magrpo(), False, make_toy_env)

    assert metric_rows(whole / "metrics.jsonl") == metric_rows(cut / "metrics.jsonl")


def test_cli_refuses_one_generation_for_group_baselines(tmp_path):
    from baselines.cli import main

    with pytest.raises(SystemExit, match="num_generations"):
        main(["train", "--num-generations", "1", "--output-dir", str(tmp_path / "x"), "--no-progress"])


def test_cli_help_lists_the_options_and_the_usage_names_train(capsys):
    from baselines.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "usage: llm-coop train" in text
    assert all(flag in text for flag in ("--algo", "--preset", "--no-progress", "--advantage-mode", "--env"))


def test_a_plugin_without_settings_gets_no_algorithm_flags(capsys):
    from baselines.cli import parse_train_args

    options, run, own = parse_train_args(["--algo", "tests.baselines.test_runner:Plain", "--steps", "3"])
    assert own is None and run.steps == 3
    with pytest.raises(SystemExit):
        parse_train_args(["--algo", "tests.baselines.test_runner:Plain", "--advantage-mode", "rloo"])


class Plain(MAGRPO):
    """MAGRPO with fixed settings and no flags of its own."""

    config_class = None

    def __init__(self, cfg=None) -> None:
        super().__init__(None)
        self.cfg = MAGRPOConfig()


def test_a_missing_model_path_or_an_offline_hub_id_fails_at_once_and_names_the_builtins(monkeypatch):
    from huggingface_hub import HfApi, constants

    from baselines.lm.loading import ModelSourceError, resolve_model

    with pytest.raises(ModelSourceError, match=r"'./missing': the local path does not exist .*embedded"):
        resolve_model("./missing")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(HfApi, "model_info", lambda *a, **k: pytest.fail("offline: the Hub must not be asked"))
    with pytest.raises(ModelSourceError, match=r"Hub is offline .*built-in models: embedded"):
        resolve_model("Qwen/Not-A-Real-Model-0B")
    assert resolve_model("embedded") == resolve_model(None)


def test_cli_says_when_a_model_does_not_exist(tmp_path):
    from baselines.cli import main

    with pytest.raises(SystemExit, match="local path does not exist"):
        main(["train", "--model", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "x"), "--no-progress"])


def test_training_commands_without_the_train_extra_say_what_to_install(monkeypatch):
    import importlib

    import baselines.cli as cli

    real = importlib.import_module

    def without_tyro(name, *args):
        if name == "tyro":
            raise ImportError("No module named 'tyro'")
        return real(name, *args)

    monkeypatch.setattr(cli.importlib, "import_module", without_tyro)
    with pytest.raises(SystemExit, match=r"needs the 'train' extra \(tyro is missing\).*llm-coop-envs\[train\]"):
        cli.main(["train", "--steps", "1"])
