"""The vLLM rollout backend without vLLM (default suite, fast): the request payloads and engine arguments,
Completions built from token ids, a fake OpenAI-compatible server over real HTTP (server mode) and a fake
``vllm.LLM`` (colocate mode) driving the same sampler code, on the embedded model."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import baselines.lm.vllm_rollout as vr
from baselines.lm.policies import Policies, SamplingConfig
from baselines.lm.vllm_rollout import (
    AdapterRef,
    EngineRequest,
    Sample,
    VLLMApi,
    VLLMSampler,
    VLLMSettings,
    completion_payload,
    completions_from_samples,
    samples_from_response,
    server_command,
)

SAMPLING = SamplingConfig(max_new_tokens=6, temperature=0.7, top_k=50, top_p=0.9)
PROMPTS = {"helper": ["def add(a, b):", "a longer prompt about sorting a list"], "main": ["def main():"]}


# ------------------------------------------------------------------------------------------ pure helpers
def _request(adapter: AdapterRef | None = None) -> EngineRequest:
    return EngineRequest("helper", (5, 6, 7), 4, 123, (0, 9), adapter)


def test_a_completion_request_asks_for_token_ids_and_raw_logprobs_with_the_agents_adapter():
    adapter = AdapterRef("helper-x-v3", 7, Path("/tmp/a/helper"))
    body = completion_payload(SAMPLING, _request(adapter), "base")
    assert body == {
        "model": "helper-x-v3",
        "prompt": [5, 6, 7],
        "n": 4,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 50,
        "max_tokens": 6,
        "stop_token_ids": [0, 9],
        "seed": 123,
        "logprobs": 0,
        "return_token_ids": True,
        "stream": False,
    }
    assert completion_payload(SamplingConfig(top_k=0), _request(), "base")["model"] == "base"
    assert completion_payload(SamplingConfig(top_k=0), _request(), "base")["top_k"] == 0  # 0 = off in vLLM too


def test_a_completion_answer_becomes_samples_in_index_order_and_a_bad_one_is_refused():
    choice = {"token_ids": [4, 0], "logprobs": {"token_logprobs": [-0.5, -0.25]}, "finish_reason": "stop"}
    body = {"choices": [{**choice, "index": 1}, {**choice, "index": 0, "token_ids": [3, 3]}]}
    samples = samples_from_response(body, n=2)
    assert samples == [Sample((3, 3), (-0.5, -0.25), "stop"), Sample((4, 0), (-0.5, -0.25), "stop")]
    with pytest.raises(RuntimeError, match="expected n=3"):
        samples_from_response(body, n=3)
    with pytest.raises(RuntimeError, match="no token_ids"):
        samples_from_response({"choices": [{"index": 0, "logprobs": None}]}, n=1)


def _decode(completion: torch.Tensor, mask: torch.Tensor) -> list[str]:
    return [" ".join(str(t) for t in row[m].tolist()) for row, m in zip(completion, mask, strict=True)]


def test_completions_are_built_like_the_policies_build_theirs():
    ids = torch.tensor([[0, 0, 5], [6, 7, 8]])  # left-padded with 0
    attn = torch.tensor([[0, 0, 1], [1, 1, 1]])
    samples = [
        [Sample((11, 9), (-1.0, -2.0)), Sample((12, 13, 14, 15), (-0.1, -0.2, -0.3, -0.4), "length")],
        [Sample((9,), (-3.0,)), Sample((16, 9, 17, 18), (-0.5, -0.6, -0.7, -0.8))],  # tokens after an EOS
    ]
    c = completions_from_samples(ids, attn, samples, pad_id=0, eos_ids=[9], decode=_decode)
    assert c.sequences.tolist() == [
        [0, 0, 5, 11, 9, 0, 0],
        [0, 0, 5, 12, 13, 14, 15],
        [6, 7, 8, 9, 0, 0, 0],
        [6, 7, 8, 16, 9, 17, 18],
    ]
    assert c.prompt_mask.tolist() == [[0, 0, 1]] * 2 + [[1, 1, 1]] * 2
    assert c.mask.sum(dim=1).tolist() == [2, 4, 1, 2]  # through the first end token
    assert c.texts == ["11 9", "12 13 14 15", "9", "16 9"]
    assert c.sample_logprobs is not None and c.engine_logprobs is not None
    assert c.sample_logprobs[0].tolist() == [-1.0, -2.0, 0.0, 0.0]
    assert c.sample_logprobs[3].tolist() == pytest.approx([-0.5, -0.6, 0.0, 0.0])  # 0 after the end
    assert torch.equal(c.sample_logprobs, c.engine_logprobs) and c.engine_logprobs is not c.sample_logprobs
    assert not c.shared_prompt and c.prompt_state is None
    one = completions_from_samples(ids[:1], attn[:1], samples[:1], 0, [9], _decode)
    assert one.shared_prompt and one.rows(0, 2).sequences.shape == (2, 5)  # padding columns cut


def test_a_short_response_without_an_end_token_is_refused():
    samples = [[Sample((11,), (-1.0,), "abort"), Sample((12, 13), (-0.1, -0.2), "length")]]
    with pytest.raises(RuntimeError, match="neither as long as the longest"):
        completions_from_samples(torch.tensor([[5]]), torch.tensor([[1]]), samples, 0, [9], _decode)


def test_the_server_command_and_environment():
    settings = VLLMSettings(gpu_memory_utilization=0.25, cpu_kv_cache_gb=3, dtype="float32")
    argv = server_command("/venv/bin/python", "/models/m", 8123, settings, seed=5, lora=(2, 16))
    line = " ".join(argv)
    assert argv[:3] == ["/venv/bin/python", "-m", vr.SERVER_MODULE]
    for flag in ("--model /models/m", "--port 8123", "--host 127.0.0.1", "--dtype float32", "--seed 5"):
        assert flag in line
    for flag in ("--enable-lora --max-loras 2 --max-lora-rank 16", "--enforce-eager", "--gpu-memory-utilization 0.25"):
        assert flag in line
    assert "--generation-config vllm" in line and "--logprobs-mode raw_logprobs" in line
    assert "--enable-lora" not in server_command("p", "m", 1, VLLMSettings(enforce_eager=False), 0, None)
    env = vr.server_env(settings, lora=True, base={"PYTHONPATH": "/repo", "HOME": "/root"})
    assert env == {"HOME": "/root", "VLLM_CPU_KVCACHE_SPACE": "3", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    assert vr.server_env(settings, lora=False, base={})["VLLM_SERVER_DEV_MODE"] == "1"


def test_lora_ranks_and_dtypes_the_engine_is_started_with():
    assert [vr.engine_lora_rank(r) for r in (1, 4, 16, 17, 300)] == [1, 8, 16, 32, 320]
    with pytest.raises(ValueError, match="above"):
        vr.engine_lora_rank(1000)
    assert vr.engine_dtype("auto", torch.float32) == "float32"
    assert vr.engine_dtype("auto", torch.bfloat16) == "bfloat16"
    assert vr.engine_dtype("float16", torch.float32) == "float16"


def test_server_mode_without_an_interpreter_says_how_to_build_one(monkeypatch):
    monkeypatch.delenv(vr.VLLM_PYTHON_ENV, raising=False)
    with pytest.raises(ValueError, match="bash run.sh vllm-env"):
        vr.server_python(VLLMSettings())
    monkeypatch.setenv(vr.VLLM_PYTHON_ENV, "/x/python")
    assert vr.server_python(VLLMSettings()) == "/x/python"
    assert vr.server_python(VLLMSettings(python="/y/python")) == "/y/python"


def test_a_server_that_dies_on_start_is_reported_with_its_log(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'ImportError: no vllm here'\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(RuntimeError, match=r"exited with 3(.|\n)*no vllm here"):
        vr.start_server("/models/m", VLLMSettings(python=str(fake)), 0, (2, 16), tmp_path)


# ------------------------------------------------------------------------------------------ fake engines
def _fake_samples(prompt: list[int], n: int, max_tokens: int, stop: list[int], seed: int) -> list[Sample]:
    """Deterministic responses from (prompt, seed): response i has 1 + (seed + i) % max_tokens tokens (an end
    token last when it stops before the budget)."""
    samples = []
    for i in range(n):
        length = 1 + (seed + i + len(prompt)) % max_tokens
        ids = [20 + (seed + i + k) % 50 for k in range(length)]
        if length < max_tokens:
            ids[-1] = stop[0]
        samples.append(Sample(tuple(ids), tuple(-0.01 * (k + 1) for k in range(length)), "stop"))
    return samples


class _FakeServer(ThreadingHTTPServer):
    """Answers the endpoints the sampler uses like a vLLM server would, recording every request."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.calls: list[tuple[str, Any]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def of(self, path: str) -> list[Any]:
        return [body for p, body in self.calls if p == path]


class _Handler(BaseHTTPRequestHandler):
    server: _FakeServer

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _reply(self, payload: Any) -> None:
        data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._reply({"data": [{"id": "served-base", "parent": None}]})
        else:
            self._reply("ok")

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        with self.server.lock:
            self.server.calls.append((self.path, body))
        if self.path != "/v1/completions":
            self._reply("Success")
            return
        samples = _fake_samples(body["prompt"], body["n"], body["max_tokens"], body["stop_token_ids"], body["seed"])
        choices = [
            {"index": i, "text": "", "token_ids": list(s.token_ids), "logprobs": {"token_logprobs": list(s.logprobs)}}
            for i, s in enumerate(samples)
        ]
        self._reply({"choices": choices})


@pytest.fixture
def fake_server() -> Iterator[_FakeServer]:
    server = _FakeServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def lora_policies() -> Policies:
    torch.manual_seed(0)
    return Policies(["helper", "main"], None, "lora")


def _unpadded(policies: Policies, agent: str) -> list[list[int]]:
    ids, mask = policies._encode(agent, PROMPTS[agent])
    return [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]


def test_server_mode_sends_each_prompt_with_its_agents_adapter_and_builds_completions(fake_server, lora_policies):
    p = lora_policies
    with VLLMSampler(p, VLLMSettings(url=fake_server.url), seed=0) as sampler:
        loads = fake_server.of("/v1/load_lora_adapter")
        assert [b["lora_name"].split("-")[0] for b in loads] == ["helper", "main"]
        assert all((Path(b["lora_path"]) / "adapter_config.json").is_file() for b in loads)
        names = {b["lora_name"].split("-")[0]: b["lora_name"] for b in loads}
        torch.manual_seed(3)
        out = sampler.generate(PROMPTS, SAMPLING, repeats=3)
        sent = fake_server.of("/v1/completions")
        assert len(sent) == 3  # one request per prompt, every agent in the same batch
        by_agent = {a: [b for b in sent if b["model"] == names[a]] for a in PROMPTS}
        for agent in PROMPTS:
            assert sorted(b["prompt"] for b in by_agent[agent]) == sorted(_unpadded(p, agent))
            for b in by_agent[agent]:
                assert b["n"] == 3 and b["stop_token_ids"] == p.members[agent].eos_ids and b["max_tokens"] == 6
                assert (b["temperature"], b["top_p"], b["top_k"], b["logprobs"]) == (0.7, 0.9, 50, 0)
        assert len({b["seed"] for b in sent}) == 3
        helper, main = out["helper"], out["main"]
        assert helper.sequences.shape[0] == 6 and main.sequences.shape[0] == 3
        assert not helper.shared_prompt and main.shared_prompt and helper.prompt_state is None
        ids, attn = p._encode("helper", PROMPTS["helper"])
        assert torch.equal(helper.sequences[:, : ids.shape[1]], ids.repeat_interleave(3, dim=0))
        assert torch.equal(helper.prompt_mask, attn.repeat_interleave(3, dim=0))
        first = next(b for b in by_agent["helper"] if b["prompt"] == _unpadded(p, "helper")[0])
        expected = _fake_samples(first["prompt"], 3, 6, first["stop_token_ids"], first["seed"])
        for row, s in enumerate(expected):  # rows prompt-major: prompt 0's three responses first
            assert helper.sequences[row, ids.shape[1] : ids.shape[1] + len(s.token_ids)].tolist() == list(s.token_ids)
            assert int(helper.mask[row].sum()) == len(s.token_ids)
            assert helper.sample_logprobs is not None
            assert helper.sample_logprobs[row, : len(s.logprobs)].tolist() == pytest.approx(list(s.logprobs))
        completion = helper.sequences[:, ids.shape[1] :]
        assert helper.texts == p.answers("helper", PROMPTS["helper"], 3, completion, helper.mask)
        seeds = [b["seed"] for b in sent]
        torch.manual_seed(3)
        sampler.generate(PROMPTS, SAMPLING, repeats=3)
        assert sorted(b["seed"] for b in fake_server.of("/v1/completions")[3:]) == sorted(seeds)  # reproducible
        sampler.sync()
        loads = fake_server.of("/v1/load_lora_adapter")[2:]
        assert [b["lora_name"] for b in loads] == [names["helper"][:-1] + "2", names["main"][:-1] + "2"]
        assert [b["lora_name"] for b in fake_server.of("/v1/unload_lora_adapter")] == list(names.values())
        assert not Path(fake_server.of("/v1/load_lora_adapter")[0]["lora_path"]).exists()  # old version removed
        root, current = sampler.root, [b["lora_name"] for b in loads]
    assert not root.exists()  # the temporary adapter directory goes with close()
    assert [b["lora_name"] for b in fake_server.of("/v1/unload_lora_adapter")][-2:] == current  # a shared server


def test_full_fine_tuning_reloads_each_agents_weights_from_a_directory(fake_server):
    torch.manual_seed(0)
    policies = Policies(["helper"], None, "full")
    with VLLMSampler(policies, VLLMSettings(url=fake_server.url), seed=0) as sampler:
        rpc = fake_server.of("/collective_rpc")
        assert rpc == [{"method": "reload_weights", "kwargs": {"weights_path": str(sampler.root / "helper-weights")}}]
        assert (sampler.root / "helper-weights" / "model.safetensors").is_file()
        assert len(fake_server.of("/reset_prefix_cache")) == 1  # no prompt cache from the old weights
        out = sampler.generate({"helper": ["def f():"]}, SAMPLING, repeats=2)
        assert fake_server.of("/v1/completions")[0]["model"] == "served-base"  # the running server's own name
        assert out["helper"].sequences.shape[0] == 2
    with pytest.raises(ValueError, match="one server"):
        VLLMSampler(Policies(["helper", "main"], None, "full"), VLLMSettings(url=fake_server.url))


class _FakeLLM:
    """Stands in for ``vllm.LLM``: records its arguments and calls, answers like _fake_samples."""

    made: list[_FakeLLM] = []

    def __init__(self, **kwargs: Any):
        self.kwargs, self.calls = kwargs, []
        self.llm_engine = SimpleNamespace(remove_lora=lambda i: self.calls.append(("remove_lora", i)))
        _FakeLLM.made.append(self)

    def generate(self, prompts, params, lora_request=None, use_tqdm=True):
        self.calls.append(("generate", prompts, params, lora_request))
        outs = []
        for prompt, sp in zip(prompts, params, strict=True):
            samples = _fake_samples(prompt["prompt_token_ids"], sp.n, sp.max_tokens, sp.stop_token_ids, sp.seed)
            outputs = [
                SimpleNamespace(
                    index=i,
                    token_ids=list(s.token_ids),
                    logprobs=[{t: SimpleNamespace(logprob=lp)} for t, lp in zip(s.token_ids, s.logprobs, strict=True)],
                    finish_reason="stop",
                )
                for i, s in enumerate(samples)
            ]
            outs.append(SimpleNamespace(outputs=outputs[::-1]))  # any order: the sampler sorts by index
        return outs

    def collective_rpc(self, method, kwargs=None):
        self.calls.append(("collective_rpc", method, kwargs))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))

    def sleep(self, level=1):
        self.calls.append(("sleep", level))

    def wake_up(self):
        self.calls.append(("wake_up",))


@pytest.fixture
def fake_vllm(monkeypatch) -> type[_FakeLLM]:
    _FakeLLM.made = []
    api = VLLMApi(
        LLM=_FakeLLM,
        SamplingParams=lambda **kw: SimpleNamespace(**kw),
        TokensPrompt=lambda **kw: dict(kw),
        LoRARequest=lambda name, int_id, path: SimpleNamespace(name=name, int_id=int_id, path=path),
    )
    monkeypatch.setattr(vr, "vllm_api", lambda: api)
    return _FakeLLM


def test_colocate_mode_sends_one_generate_with_an_adapter_per_prompt_and_new_ids_after_sync(fake_vllm, lora_policies):
    p = lora_policies
    with VLLMSampler(p, VLLMSettings(mode="colocate"), seed=7) as sampler:
        (llm,) = fake_vllm.made  # one engine for the shared base
        assert llm.kwargs["enable_lora"] and llm.kwargs["max_loras"] == 2 and llm.kwargs["max_lora_rank"] == 16
        assert llm.kwargs["seed"] == 7 and llm.kwargs["dtype"] == "float32"
        assert llm.kwargs["logprobs_mode"] == "raw_logprobs" and llm.kwargs["generation_config"] == "vllm"
        torch.manual_seed(1)
        out = sampler.generate(PROMPTS, SAMPLING, repeats=2)
        (_, prompts, params, loras), *_ = [c for c in llm.calls if c[0] == "generate"]
        assert [pr["prompt_token_ids"] for pr in prompts] == _unpadded(p, "helper") + _unpadded(p, "main")
        assert [lr.name.split("-")[0] for lr in loras] == ["helper", "helper", "main"]
        assert loras[0].int_id == loras[1].int_id != loras[2].int_id
        assert all(sp.n == 2 and sp.max_tokens == 6 and sp.logprobs == 0 for sp in params)
        assert [sp.stop_token_ids for sp in params] == [p.members[a].eos_ids for a in ("helper", "helper", "main")]
        assert len({sp.seed for sp in params}) == 3
        assert out["helper"].sequences.shape[0] == 4 and out["main"].shared_prompt
        first = _fake_samples(prompts[0]["prompt_token_ids"], 2, 6, params[0].stop_token_ids, params[0].seed)
        assert out["helper"].engine_logprobs is not None
        assert out["helper"].engine_logprobs[0, : len(first[0].logprobs)].tolist() == pytest.approx(first[0].logprobs)
        old = {lr.int_id for lr in loras}
        sampler.sync()
        torch.manual_seed(1)
        sampler.generate(PROMPTS, SAMPLING, repeats=2)
        (_, _, params2, loras2) = [c for c in llm.calls if c[0] == "generate"][-1]
        assert {lr.int_id for lr in loras2}.isdisjoint(old) and all(lr.name.endswith("-v2") for lr in loras2)
        assert sorted(c[1] for c in llm.calls if c[0] == "remove_lora") == sorted(old)
        assert [sp.seed for sp in params2] == [sp.seed for sp in params]  # same torch seed, same engine seeds


def test_colocate_full_fine_tuning_has_an_engine_per_agent_and_sleeps_between_phases(fake_vllm):
    torch.manual_seed(0)
    policies = Policies(["helper", "main"], None, "full")
    settings = VLLMSettings(mode="colocate", sleep_between_phases=True)
    with VLLMSampler(policies, settings, seed=0) as sampler:
        assert len(fake_vllm.made) == 2 and not any("enable_lora" in llm.kwargs for llm in fake_vllm.made)
        assert all(llm.kwargs["enable_sleep_mode"] for llm in fake_vllm.made)
        for agent, llm in zip(policies.agents, fake_vllm.made, strict=True):
            path = str(sampler.root / f"{agent}-weights")
            assert llm.calls == [("collective_rpc", "reload_weights", {"weights_path": path}), ("reset_prefix_cache",)]
        sampler.generate({"helper": ["x"], "main": ["y"]}, SAMPLING, repeats=1)
        sampler.sync()
        sampler.generate({"helper": ["x"], "main": ["y"]}, SAMPLING, repeats=1)
        names = [c[0] for c in fake_vllm.made[0].calls[2:]]
        assert names == ["generate", "sleep", "wake_up", "collective_rpc", "reset_prefix_cache", "generate", "sleep"]
    with pytest.raises(ValueError, match="colocate"):
        VLLMSampler(policies, VLLMSettings(sleep_between_phases=True))
