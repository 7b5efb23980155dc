"""Finding a model by name (built-in names of :mod:`baselines.lm.builtin`, local paths, Hugging Face Hub ids), loading tokenizers, and the
token ids that end a response.

:func:`resolve_model` fails fast, with the reason and the built-in names: a local path that does not exist,
a Hub id while the Hub is offline and the model is not cached, or a Hub that cannot be reached (instead of
transformers' retries, which take tens of seconds, and its "Repo id must be in the form ..." for paths).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from baselines.lm.builtin import BUILTIN_MODELS, BuiltinModelMissing

__all__ = [
    "BUILTIN_MODELS",
    "LORA_TARGETS",
    "ModelSourceError",
    "end_of_turn_ids",
    "eos_ids_of",
    "load_tokenizer",
    "lora_targets_for",
    "resolve_model",
]

_ATTENTION_AND_MLP = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text", "olmo", "olmo2", "granite"),
        _ATTENTION_AND_MLP,
    ),
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    "phi": ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
}
"""LoRA target modules per ``config.model_type``: every attention and MLP projection of the architecture."""

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class ModelSourceError(ValueError):
    """A model name that names nothing loadable; the message says why and lists the built-in names."""


def _builtin_hint() -> str:
    return f"built-in models: {', '.join(BUILTIN_MODELS)}"


@cache  # the runner and Policies both resolve each agent's name: ask the Hub once per name
def resolve_model(name: str | None) -> str:
    """The local directory or Hub id to load for ``name`` (None = the embedded model). Failures are not
    cached: a name that failed is checked again next time."""
    if name is None or name in BUILTIN_MODELS:
        try:
            return str(BUILTIN_MODELS[name or "embedded"].locate())
        except BuiltinModelMissing as exc:
            raise ModelSourceError(str(exc)) from None
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if name.startswith((".", "/", "~")) or path.exists() or name.count("/") > 1 or not _REPO_ID.match(name):
        raise ModelSourceError(f"model {name!r}: the local path does not exist ({_builtin_hint()})")
    _check_hub(name)
    return name


def _check_hub(repo_id: str) -> None:
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return  # cached: loads offline too
    if constants.HF_HUB_OFFLINE:
        raise ModelSourceError(
            f"model {repo_id!r}: not in the local Hugging Face cache and the Hub is offline (HF_HUB_OFFLINE=1); "
            f"download it with internet first, or give a local path ({_builtin_hint()})"
        )
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        HfApi().model_info(repo_id, timeout=10)
    except RepositoryNotFoundError:
        raise ModelSourceError(
            f"model {repo_id!r}: no such model on the Hugging Face Hub ({_builtin_hint()})"
        ) from None
    except Exception as exc:  # any transport failure: say so at once instead of retrying
        raise ModelSourceError(
            f"model {repo_id!r}: the Hugging Face Hub is unreachable ({type(exc).__name__}: {exc}); "
            f"give a local path ({_builtin_hint()})"
        ) from exc


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"tokenizer of {name_or_path!r} has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def eos_ids_of(model, tokenizer) -> list[int]:
    """Every token id that ends a response: the tokenizer's EOS and the model's generation EOS id(s)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    ids |= set(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos] if gen_eos is not None else [])
    if not ids:
        raise ValueError("no EOS token id: set one on the tokenizer or the model's generation config")
    return sorted(ids)


def lora_targets_for(model) -> list[str]:
    """The LoRA target modules of ``model``'s architecture (:data:`LORA_TARGETS`); an architecture not in the
    table is an error asking for explicit targets, never a guess that could adapt nothing."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in LORA_TARGETS:
        raise ValueError(
            f"no LoRA target modules known for model_type {model_type!r} ({type(model).__name__}); give them with "
            f"--lora-targets (known: {', '.join(sorted(LORA_TARGETS))})"
        )
    return list(LORA_TARGETS[model_type])


_PROBE = "\u2063reply\u2063"  # a string no template rewrites


def end_of_turn_ids(tokenizer) -> list[int]:
    """The token(s) a chat template writes right after an assistant message (e.g. ``<|im_end|>``,
    ``<|eot_id|>``, ``<end_of_turn>``): generation stops there. Found by rendering a one-turn chat, so it
    follows whatever template the tokenizer carries; empty without a template."""
    if tokenizer.chat_template is None:
        return []
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}]
    text = tokenizer.apply_chat_template(chat, tokenize=False)
    after = text[text.rindex(_PROBE) + len(_PROBE) :]
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    return [next(i for i in ids if i in special)] if any(i in special for i in ids) else []
