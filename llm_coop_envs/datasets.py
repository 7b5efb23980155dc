"""Where tasks come from: bundled files, local JSON/JSONL files, or the Hugging Face Hub.

``dataset=`` of every env accepts:

* ``"bundled"``: original data written for this project, shipped in ``llm_coop_envs/data/``.
* a local path ending in ``.json`` (a list of objects) or ``.jsonl`` (one object per line). The schema is
  per family and documented in the env's docstring; records lacking a required field raise a
  ``DatasetError`` naming the field and the record.
* a Hugging Face Hub dataset id (needs ``pip install 'llm-coop-envs[hub]'`` and internet). With
  ``HF_HUB_OFFLINE=1`` or ``HF_DATASETS_OFFLINE=1`` set, or no route to the Hub, loading fails at once
  with a ``DatasetError`` saying how to proceed, instead of retrying for a minute.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from llm_coop_envs.core import Task, TaskSet

__all__ = ["DatasetError", "build_task_set", "hub_rows", "is_local_path", "read_bundled", "read_local", "require_field"]

Record = dict[str, Any]
_HUB_HOST = ("huggingface.co", 443)


class DatasetError(ValueError):
    """A dataset that cannot be found, reached or parsed."""


def is_local_path(dataset: str) -> bool:
    """Whether ``dataset`` names a local file rather than a Hub id."""
    return dataset.endswith((".json", ".jsonl")) or Path(dataset).is_file()


def read_bundled(filename: str) -> list[Record]:
    """Records of a JSONL file in ``llm_coop_envs/data/``."""
    text = resources.files("llm_coop_envs").joinpath(f"data/{filename}").read_text(encoding="utf-8")
    return _parse_jsonl(text, f"bundled {filename}")


def read_local(path: str) -> list[Record]:
    """Records of a local ``.json`` (list of objects) or ``.jsonl`` file."""
    file = Path(path)
    if not file.is_file():
        raise DatasetError(f"dataset file {path!r} does not exist")
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".jsonl":
        return _parse_jsonl(text, path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise DatasetError(f"{path}: a .json dataset must be a list of objects")
    return data


def _parse_jsonl(text: str, where: str) -> list[Record]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{where}, line {number}: not valid JSON ({error})") from error
        if not isinstance(record, dict):
            raise DatasetError(f"{where}, line {number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def require_field(record: Record, name: str, where: str, kind: type = str) -> Any:
    """``record[name]``, or a ``DatasetError`` naming the missing or mistyped field."""
    if name not in record:
        raise DatasetError(f"{where}: missing required field {name!r} (fields present: {sorted(record)})")
    value = record[name]
    if not isinstance(value, kind):
        raise DatasetError(f"{where}: field {name!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def hub_rows(dataset_id: str, split: str, max_rows: int | None, revision: str | None = None) -> list[Record]:
    """Up to ``max_rows`` rows of one split of a Hub dataset, failing fast when the Hub is unreachable."""
    _check_hub_reachable(dataset_id)
    try:
        import datasets
    except ImportError as error:
        raise DatasetError(
            f"loading {dataset_id!r} from the Hugging Face Hub needs the 'datasets' package: "
            "pip install 'llm-coop-envs[hub]'"
        ) from error
    selector = split if max_rows is None else f"{split}[:{max_rows}]"
    try:
        rows = datasets.load_dataset(dataset_id, split=selector, revision=revision)
    except (ConnectionError, OSError, ValueError) as error:
        raise DatasetError(f"could not load split {split!r} of {dataset_id!r} from the Hub: {error}") from error
    return [dict(row) for row in rows]


def _check_hub_reachable(dataset_id: str) -> None:
    advice = (
        "use dataset='bundled', or a local .json/.jsonl file in the schema of the env's docstring, "
        "or run where huggingface.co is reachable"
    )
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on"):
            raise DatasetError(f"{dataset_id!r} is a Hub dataset but {flag} is set; {advice}")
    try:
        socket.create_connection(_HUB_HOST, timeout=3).close()
    except OSError as error:
        raise DatasetError(f"cannot reach the Hugging Face Hub for {dataset_id!r} ({error}); {advice}") from error


def build_task_set(
    name: str,
    records: Iterable[Record],
    to_task: Callable[[Record, int, str], Task],
) -> TaskSet:
    """A ``TaskSet`` from records, each converted by ``to_task(record, index, where)``."""
    return TaskSet(name, [to_task(record, index, f"{name}, record {index}") for index, record in enumerate(records)])
