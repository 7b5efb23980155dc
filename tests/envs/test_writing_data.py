"""Writing datasets: bundled data, local files, Hub ids (offline here: must fail fast and say why)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from llm_coop_envs import make
from llm_coop_envs.datasets import DatasetError, read_bundled


@pytest.mark.parametrize(
    ("filename", "field", "low", "high", "n_train", "n_test"),
    [
        ("posts.jsonl", "post", 60, 250, 60, 20),
        ("abstracts.jsonl", "abstract", 100, 300, 48, 16),
    ],
)
def test_bundled_data_shape(filename: str, field: str, low: int, high: int, n_train: int, n_test: int) -> None:
    records = read_bundled(filename)
    assert len({r["task_id"] for r in records}) == len(records)
    assert sum(r["split"] == "train" for r in records) == n_train
    assert sum(r["split"] == "test" for r in records) == n_test
    assert all(low <= len(r[field].split()) <= high for r in records)
    assert len({r[field] for r in records}) == len(records)


def test_env_loads_bundled_splits() -> None:
    env = make("coop_writing-v0")
    assert env.splits == ("train", "test") and len(env.task_ids("test")) == 20
    observations, _ = env.reset(options={"task_id": "post-004"})
    assert "SUBREDDIT: r/" in observations["summary"]["prompt"] and "POST: " in observations["summary"]["prompt"]
    env = make("coop_abstract_expansion-v0", split="test")
    _, infos = env.reset(seed=0)
    assert infos["background"]["split"] == "test"


def write(path: Path, records: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return str(path)


def test_local_jsonl_and_json(tmp_path: Path) -> None:
    records = [
        {"task_id": f"t{i}", "split": "train" if i else "test", "text": f"Post number {i} about tea."} for i in range(3)
    ]
    env = make("coop_writing-v0", dataset=write(tmp_path / "posts.jsonl", records))
    assert env.task_ids() == ["t0", "t1", "t2"] and env.task_ids("test") == ["t0"]
    observations, _ = env.reset(options={"task_id": "t2"})
    assert "Post number 2 about tea." in observations["summary"]["prompt"]
    as_json = tmp_path / "abstracts.json"
    as_json.write_text(json.dumps([{"abstract_text": "We study tea."}]), encoding="utf-8")
    env = make("coop_abstract_expansion-v0", dataset=str(as_json), text_field="abstract_text")
    assert env.task_ids() == ["task-00000"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"task_id": "a", "body": "x"}\n', "record 0: missing required field 'text'"),
        ('{"text": 5}\n', "field 'text' must be str, got int"),
        ('{"text": "ok"}\n{oops\n', "line 2: not valid JSON"),
        ("[1, 2]\n", "expected a JSON object"),
        ('{"task_id": "a", "text": "x"}\n{"task_id": "a", "text": "y"}\n', "task id 'a' twice"),
        ('{"text": "   "}\n', "the text is empty"),
    ],
)
def test_local_file_errors_name_the_problem(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make("coop_writing-v0", dataset=str(path))


def test_missing_local_file() -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        make("coop_writing-v0", dataset="no/such/file.jsonl")


@pytest.mark.parametrize(
    ("env_id", "hub_id"),
    [
        ("coop_writing-v0", "trl-lib/tldr"),
        ("coop_abstract_expansion-v0", "OpenMLRL/arXiv_abstract"),
    ],
)
def test_hub_dataset_offline_fails_fast_with_advice(env_id: str, hub_id: str) -> None:
    start = time.monotonic()
    with pytest.raises(DatasetError, match="HF_HUB_OFFLINE is set; use dataset='bundled'"):
        make(env_id, dataset=hub_id)
    assert time.monotonic() - start < 5


def test_unknown_hub_dataset_needs_text_field() -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'someone/posts'.*text_field"):
        make("coop_writing-v0", dataset="someone/posts")


def test_hub_rows_are_converted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Hub path with the network replaced by a local fixture (field, splits, TL;DR suffix)."""
    import llm_coop_envs.writing as writing

    calls = []

    def fake_rows(dataset_id: str, split: str, max_rows: int | None) -> list[dict]:
        calls.append((dataset_id, split, max_rows))
        return [{"prompt": f"SUBREDDIT: r/x\n\nTITLE: t\n\nPOST: {split} post {i}\n\nTL;DR:"} for i in range(2)]

    monkeypatch.setattr(writing, "hub_rows", fake_rows)
    env = make("coop_writing-v0", dataset="trl-lib/tldr", max_rows=2)
    assert calls == [("trl-lib/tldr", "train", 2), ("trl-lib/tldr", "test", 2)]
    assert env.task_ids("test") == ["test/0", "test/1"]
    observations, _ = env.reset(options={"task_id": "train/1"})
    prompt = observations["summary"]["prompt"]
    assert "POST: train post 1\n\nConcise summary:" in prompt and "TL;DR" not in prompt


def test_unreachable_hub_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(flag, raising=False)

    def refuse(*args: object, **kwargs: object) -> socket.socket:
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(DatasetError, match="cannot reach the Hugging Face Hub.*network is unreachable"):
        make("coop_writing-v0", dataset="trl-lib/tldr")
