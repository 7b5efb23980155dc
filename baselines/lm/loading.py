"""Loading Hugging Face tokenizers and the token ids that end a response."""

from __future__ import annotations

__all__ = ["eos_ids_of", "load_tokenizer"]


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
