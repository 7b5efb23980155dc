"""A tiny chat model for tests: the embedded model with its own chat template, two new special tokens and a
different vocabulary size (so a team of it and the embedded model has two tokenizers)."""

from __future__ import annotations

from pathlib import Path

import torch

from baselines.lm.embedded import EMBEDDED_DIR

START, END = "<|turn|>", "<|end_turn|>"
TEMPLATE = (
    "{% for m in messages %}" + START + "{{ m['role'] }}\n{{ m['content'] }}" + END + "\n{% endfor %}"
    "{% if add_generation_prompt %}" + START + "assistant\n{% endif %}"
)


def build_chat_model(out: Path, ends_at_once: bool = False) -> Path:
    """Write the chat model to ``out``. ``ends_at_once``: its output head makes the end-of-turn token the
    most likely next token everywhere (untied head, that row set along the mean final hidden state), so
    every response is exactly that one token: a model that only stops if the sampler stops at end of turn."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(EMBEDDED_DIR))
    tok.add_special_tokens({"additional_special_tokens": [START, END]})
    tok.chat_template = TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(str(EMBEDDED_DIR))
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    if ends_at_once:
        _head_says_end(model, tok)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@torch.no_grad()
def _head_says_end(model, tok) -> None:
    model.config.tie_word_embeddings = False
    head = torch.nn.Linear(model.config.hidden_size, len(tok), bias=False)
    head.weight.copy_(model.get_input_embeddings().weight)
    model.set_output_embeddings(head)
    text = "The quick brown fox jumps over the lazy dog. " * 4
    ids = tok(tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False), return_tensors="pt")
    hidden = model(**ids, output_hidden_states=True).hidden_states[-1][0]  # (L, H) after the final norm
    direction = hidden.mean(dim=0)
    head.weight[tok.convert_tokens_to_ids(END)] = 50 * direction / direction.norm()
