"""Feedback from a language model in multi-turn episodes, named by a string so that it fits a registry spec.

A model feedback source is chosen by one string (what ``CodingEnv(feedback=...)`` and the trainer's
``--feedback`` flag take):

- ``"hf:<name or path>"``: a Hugging Face causal LM, run in this process (:class:`HFFeedbackModel`). The name
  goes through ``baselines.lm.loading.resolve_model`` when that module is importable (built-in names such as
  ``embedded``; missing paths and offline Hub ids fail fast), else to transformers as is. Needs
  ``pip install 'llm-coop-envs[train]'``; torch and transformers are imported only when the model is
  first used, so an env built from a recorded spec for single-turn scoring needs neither.
- ``"openai:<base url>"``: an OpenAI-compatible chat-completions server (:class:`OpenAIFeedbackModel`), e.g.
  ``"openai:http://127.0.0.1:8000/v1"`` (vLLM, llama.cpp, a hosted API). Standard library only. The API key
  is read from ``$OPENAI_API_KEY`` at each request and never stored.

Both decode greedily (temperature 0) with a bounded number of new tokens, and every failure raises
:class:`FeedbackError` naming the model or URL and the cause (no retries). A source object is created once
per env and shared by its clones (``copy.copy`` keeps the reference), and the HF model loads at its first
use, so cloning an env never loads a model. What the model is shown is the env's business: this module
only builds the review chat from the parts the env hands it (:func:`review_messages`).
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from llm_coop_envs.core import Message

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_TIMEOUT_S",
    "FEEDBACK_FORMS",
    "MAX_REPLY_CHARS",
    "FeedbackError",
    "FeedbackModel",
    "HFFeedbackModel",
    "OpenAIFeedbackModel",
    "parse_feedback_model",
    "review_messages",
]

FEEDBACK_FORMS = (
    "'level', 'plain', 'hf:<model name or local path>' (e.g. 'hf:embedded'), "
    "'openai:<base url>' (e.g. 'openai:http://127.0.0.1:8000/v1') or a callable"
)
"""The accepted ``feedback`` values, as error messages list them."""
DEFAULT_MAX_TOKENS = 160
"""New tokens a feedback model may write."""
DEFAULT_TIMEOUT_S = 60.0
"""Seconds an OpenAI-compatible request may take (connecting and reading)."""
MAX_REPLY_CHARS = 1500
"""Longest feedback text passed on to an agent; longer replies are clipped."""
MAX_CODE_CHARS = 4000
"""Longest code or answer shown to the feedback model, per agent."""
EMPTY_REPLY = "(The reviewer gave no feedback.)"
_INSTALL_HINT = "pip install 'llm-coop-envs[train]'"
_SYSTEM = (
    "You review Python code written by a team of two programmers. The helper writes one function named `aux`; "
    "the main programmer writes the problem's main function, which may call `aux`. You are given the problem, "
    "the team's code and the results of the visible tests. Write short, concrete feedback for ONE of the two "
    "programmers: what is wrong with their function and how to fix it, in at most five sentences. Do not write "
    "the complete solution."
)


class FeedbackError(RuntimeError):
    """A feedback model that could not be loaded or did not answer; the message names it and the cause."""


class FeedbackModel(ABC):
    """A language model that answers a review chat with feedback text."""

    source: str
    """The ``feedback`` string this model was built from (e.g. ``"hf:embedded"``)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> FeedbackModel:
        return self  # a shared resource: a deep copy of an env keeps the same model, it never reloads one

    @abstractmethod
    def complete(self, messages: Sequence[Message]) -> str:
        """The model's raw reply to ``messages`` (a system and a user message)."""

    def review(self, messages: Sequence[Message]) -> str:
        """The reply, stripped and clipped to :data:`MAX_REPLY_CHARS` (a placeholder when empty)."""
        text = self.complete(messages).strip()
        if not text:
            return EMPTY_REPLY
        return text if len(text) <= MAX_REPLY_CHARS else text[: MAX_REPLY_CHARS - 3].rstrip() + "..."


class HFFeedbackModel(FeedbackModel):
    """A Hugging Face causal LM, loaded at the first :meth:`complete` and then kept (greedy decoding)."""

    def __init__(self, name: str, *, max_new_tokens: int = DEFAULT_MAX_TOKENS, seed: int = 0) -> None:
        self.source = f"hf:{name}"
        self.name = name
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.resolved: str | None = None  # what was loaded: a local directory or a Hub id
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the model and the lock (another process loads the model at its first use)."""
        return {**self.__dict__, "_model": None, "_tokenizer": None, "_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def complete(self, messages: Sequence[Message]) -> str:
        with self._lock:
            if self._model is None:
                self._load()
            return self._generate(messages)

    def _load(self) -> None:
        torch, transformers = _import_torch_transformers(self.source)
        self.resolved = _resolve_name(self.name)
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(self.resolved)
            model = transformers.AutoModelForCausalLM.from_pretrained(self.resolved)
        except (OSError, ValueError, RuntimeError) as exc:
            raise FeedbackError(f"feedback model {self.source!r} ({self.resolved}) failed to load: {exc}") from exc
        model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        self._model, self._tokenizer = model, tokenizer

    def _generate(self, messages: Sequence[Message]) -> str:
        import torch

        model, tokenizer = self._model, self._tokenizer
        ids = tokenizer(self._prompt_text(messages), add_special_tokens=False, return_tensors="pt").input_ids
        limit = getattr(model.config, "max_position_embeddings", None)
        if isinstance(limit, int) and limit > self.max_new_tokens and ids.shape[1] > limit - self.max_new_tokens:
            ids = ids[:, -(limit - self.max_new_tokens) :]  # keep the end: the request to the reviewer
        ids = ids.to(model.device)  # (1, T)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        with torch.random.fork_rng(devices=[]), torch.no_grad():  # the caller's global RNG stays untouched
            torch.manual_seed(self.seed)
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=pad,
            )  # (1, T + new)
        return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))

    def _prompt_text(self, messages: Sequence[Message]) -> str:
        if getattr(self._tokenizer, "chat_template", None):
            text = self._tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
            return str(text)
        return "\n\n".join(m["content"] for m in messages) + "\n\nFeedback:\n"


class OpenAIFeedbackModel(FeedbackModel):
    """An OpenAI-compatible ``/chat/completions`` endpoint, reached with urllib (one request, no retries)."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str = "default",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> None:
        self.source = f"openai:{base_url}"
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens

    def complete(self, messages: Sequence[Message]) -> str:
        body = {"model": self.model, "messages": list(messages), "temperature": 0.0, "max_tokens": self.max_tokens}
        headers = {"Content-Type": "application/json"}
        key = os.environ.get("OPENAI_API_KEY")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        return _reply_content(self._send(request), self.url)

    def _send(self, request: urllib.request.Request) -> bytes:
        fail = f"feedback request to {self.url} failed"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read(300).decode("utf-8", "replace").strip()
            raise FeedbackError(f"{fail}: HTTP {exc.code} {exc.reason}{': ' + detail if detail else ''}") from exc
        except urllib.error.URLError as exc:
            raise FeedbackError(f"{fail}: {_reason_text(exc.reason, self.timeout_s)}") from exc
        except (OSError, http.client.HTTPException) as exc:  # a timeout, reset or garbled reply while reading
            raise FeedbackError(f"{fail}: {_reason_text(exc, self.timeout_s)}") from exc


def _reply_content(raw: bytes, url: str) -> str:
    """``choices[0].message.content`` of a chat-completions reply, or a FeedbackError naming what is wrong."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FeedbackError(f"feedback reply from {url} is not JSON ({exc}): {raw[:200]!r}") from exc
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise FeedbackError(f"feedback reply from {url} has no choices[0].message.content: {raw[:200]!r}") from exc
    if not isinstance(content, str):
        raise FeedbackError(f"feedback reply from {url}: choices[0].message.content is {type(content).__name__}")
    return content


def _reason_text(reason: object, timeout_s: float) -> str:
    if isinstance(reason, TimeoutError):
        return f"timed out after {timeout_s:g} s"
    return f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else str(reason)


def _import_torch_transformers(source: str) -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ImportError(
            f"feedback {source!r} runs a Hugging Face model and needs torch and transformers "
            f"({exc.name or exc} is missing): {_INSTALL_HINT}"
        ) from exc
    return torch, transformers


def _resolve_name(name: str) -> str:
    """``baselines.lm.loading.resolve_model(name)`` when the learners are installed, else ``name``."""
    try:
        from baselines.lm.loading import resolve_model
    except ModuleNotFoundError as exc:
        if exc.name not in ("baselines", "baselines.lm", "baselines.lm.loading"):
            raise
        return name
    try:
        return str(resolve_model(name))
    except (OSError, ValueError, RuntimeError) as exc:
        raise FeedbackError(f"feedback model 'hf:{name}': {exc}") from exc


def parse_feedback_model(
    feedback: str, *, model: str = "default", timeout_s: float = DEFAULT_TIMEOUT_S, max_tokens: int = DEFAULT_MAX_TOKENS
) -> FeedbackModel | None:
    """The model feedback source named by ``feedback`` (None for ``"level"``/``"plain"``); nothing loads yet.

    Raises ValueError, listing :data:`FEEDBACK_FORMS`, for any other string, an empty model name or a base
    URL that is not ``http(s)://host[...]``.
    """
    if feedback in ("level", "plain"):
        return None
    kind, sep, target = feedback.partition(":")
    if sep and kind == "hf" and target.strip():
        return HFFeedbackModel(target.strip(), max_new_tokens=max_tokens)
    if sep and kind == "openai" and _is_http_url(target):
        return OpenAIFeedbackModel(target, model=model, timeout_s=timeout_s, max_tokens=max_tokens)
    raise ValueError(f"feedback must be one of {FEEDBACK_FORMS}; got {feedback!r}")


def _is_http_url(text: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(text)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and port_ok


def review_messages(problem: str, agent: str, name: str, aux: str, main: str, results: str) -> list[Message]:
    """The review chat: the problem, the team's code, the visible-test results and whom to address.

    ``agent`` is ``"helper"`` or ``"main"``, ``name`` the main function's name, ``aux``/``main`` the code (or
    the raw answer) of each agent, ``results`` the env's diagnostics of the visible tests. Nothing else (in
    particular no hidden test) is shown.
    """
    whom = "the helper, who writes `aux`" if agent == "helper" else f"the main programmer, who writes `{name}`"
    user = "\n\n".join(
        [
            f"Problem:\n\n{problem.rstrip()}",
            f"The helper's function `aux`:\n\n{_clip_code(aux)}",
            f"The main function `{name}`:\n\n{_clip_code(main)}",
            f"Automatic checks of the team's code (visible tests only):\n\n{results.strip()}",
            f"Write your feedback for {whom}.",
        ]
    )
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


def _clip_code(code: str) -> str:
    code = code.strip()
    if not code:
        return "(nothing was written)"
    return code if len(code) <= MAX_CODE_CHARS else code[:MAX_CODE_CHARS] + "\n... (clipped)"
