"""What sampling returns and scoring reads: the sampling settings, one agent's sampled responses, and the
prompt forward that sampling leaves for the update to reuse."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

__all__ = [
    "ChatPrompt",
    "Completions",
    "Prompt",
    "PromptState",
    "SamplingConfig",
    "answer_start",
    "positions",
    "used_width",
]


@dataclass(frozen=True)
class ChatPrompt:
    """A prompt in both of the env's forms: its text (the observation) and the same as chat messages
    (system = the agent's role, user = the task, then earlier replies and feedback). A policy with a chat
    template reads ``messages``; one without reads ``text``. ``answer_start`` (the env's
    ``infos[agent]["answer_start"]``) is written as the start of the reply: the model continues it, and the
    answer is ``answer_start`` + the continuation (its tokens are prompt tokens, so they get no gradient)."""

    text: str
    messages: tuple[Mapping[str, str], ...]
    answer_start: str = ""

    @classmethod
    def from_text(cls, text: str, system: str | None = None) -> ChatPrompt:
        """``text`` as a chat: when it starts with ``system`` (the role instructions the env put first), that
        is the system message and the rest the user message; otherwise all of it is one user message."""
        if system and text.startswith(system):
            user = text[len(system) :].strip()
            return cls(text, ({"role": "system", "content": system}, {"role": "user", "content": user}))
        return cls(text, ({"role": "user", "content": text},))


Prompt = str | ChatPrompt
"""What a policy is prompted with: plain text (one user message under a chat template) or a ChatPrompt."""


def answer_start(prompt: Prompt) -> str:
    """The text ``prompt``'s answer begins with ("" for plain text)."""
    return prompt.answer_start if isinstance(prompt, ChatPrompt) else ""


@dataclass
class SamplingConfig:
    """How responses are sampled."""

    max_new_tokens: int = 96
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off


@dataclass
class PromptState:
    """A shared prompt's forward from sampling: its last logits and KV cache, tagged with the version counters
    of the agent's trainable tensors at the time. While those are unchanged, the update reuses it as the
    forward of its prompt pass (`score`) instead of running the prompt again."""

    logits: torch.Tensor  # (1, 1, V)
    kv: list[torch.Tensor]  # keys and values of every layer, alternating, each (1, H_kv, P, D)
    versions: tuple[int, ...]


@dataclass
class Completions:
    """G sampled responses of one agent (rows), with everything needed to score them again."""

    sequences: torch.Tensor  # (B, P + T) prompt (left-padded) + completion
    prompt_mask: torch.Tensor  # (B, P) 1 on real prompt tokens
    mask: torch.Tensor  # (B, T) True on generated tokens up to and including the first EOS
    texts: list[str]
    sample_logprobs: torch.Tensor | None = None  # (B, T) log-prob of each token when it was sampled
    shared_prompt: bool = False  # every row answers the same prompt (scored with one prompt forward)
    prompt_state: PromptState | None = None  # the sampling prefill of the shared prompt, when reusable
    engine_logprobs: torch.Tensor | None = None
    """(B, T) an external sampling engine's (vLLM's) log-prob of each token under the unmodified model (no
    temperature or filters; 0 after the end); None when the trainer's own code sampled."""

    @property
    def prompt_width(self) -> int:
        return self.prompt_mask.shape[1]

    def rows(self, start: int, stop: int) -> Completions:
        """Rows start:stop answering ONE prompt (shared prompt), without the prompt columns that are padding
        in all of them and the completion columns after all of them ended."""
        attn, mask = self.prompt_mask[start:stop], self.mask[start:stop]
        cut = int(attn.argmax(dim=1).min()) if bool(attn.any(dim=1).all()) else 0
        width = used_width(mask)
        end = self.prompt_width + width
        lps = None if self.sample_logprobs is None else self.sample_logprobs[start:stop, :width]
        engine = None if self.engine_logprobs is None else self.engine_logprobs[start:stop, :width]
        return Completions(
            self.sequences[start:stop, cut:end],
            attn[:, cut:],
            mask[:, :width],
            self.texts[start:stop],
            lps,
            True,
            engine_logprobs=engine,
        )


def positions(attn: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, L), as generation numbers positions
    return (attn.cumsum(dim=1) - 1).clamp(min=0)


def used_width(mask: torch.Tensor) -> int:
    """Columns of a (B, T) completion mask up to the last one any row uses (all of them if none is used)."""
    used = mask.any(dim=0).nonzero()
    return int(used.max()) + 1 if len(used) else mask.shape[1]
