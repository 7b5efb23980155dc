"""Model feedback in the coding env: an OpenAI-compatible server (a local fake), a Hugging Face model (the
embedded one), what the feedback model is shown (never a hidden test), clones sharing the model, errors."""

from __future__ import annotations

import copy
import json
import pickle
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from llm_coop_envs import make
from llm_coop_envs.coding import CodingEnv
from llm_coop_envs.feedback import FeedbackError, HFFeedbackModel, OpenAIFeedbackModel

TASK_ID = "coop_code/005"
WRONG_HELPER = "def aux(*a):\n    return 12345"
WRONG_MAIN = "def longest_run_char(s):\n    return aux(s)"
REPLY = "REVIEWER SAYS: aux must return the runs of s, not a constant."


class FakeServer:
    """An OpenAI-compatible chat-completions server on 127.0.0.1 that records every request.

    ``mode``: "ok" (answers ``REPLY``), "500" (an HTTP error), "malformed" (a body that is not JSON) or
    "no_choices" (JSON without ``choices``)."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if server.mode == "500":
                    return self._answer(500, b'{"error": "model crashed"}')
                if server.mode == "malformed":
                    return self._answer(200, b"this is not json {")
                if server.mode == "no_choices":
                    return self._answer(200, b'{"object": "chat.completion"}')
                reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY}}]}
                return self._answer(200, json.dumps(reply).encode())

            def _answer(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # keep pytest's output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    yield fake
    fake.close()


def openai_env(url: str, **kwargs: Any) -> CodingEnv:
    return make("coop_coding-v0", max_turns=2, feedback=f"openai:{url}", feedback_model="m", **kwargs)


def wrong_first_turn(env: CodingEnv) -> tuple[Any, ...]:
    """Reset to TASK_ID and play wrong code, so the episode goes on to a second turn."""
    env.reset(options={"task_id": TASK_ID})
    return env.step({"helper": WRONG_HELPER, "main": WRONG_MAIN})


def request_text(request: dict[str, Any]) -> str:
    return "\n".join(message["content"] for message in request["body"]["messages"])


# ---------------------------------------------------------------- an OpenAI-compatible server
def test_openai_feedback_episode(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    env = openai_env(server.url)
    observations, _, terminations, truncations, infos = wrong_first_turn(env)
    assert not any(terminations.values()) and not any(truncations.values()) and env.agents == ["helper", "main"]

    assert len(server.requests) == 2  # one review per agent
    task = env.tasks.get(TASK_ID)
    visible, hidden = task.fields["asserts"][0], set(task.fields["asserts"][1:]) - {task.fields["asserts"][0]}
    assert hidden  # the check below means something
    for request, agent in zip(server.requests, ("helper", "main"), strict=True):
        body, text = request["body"], request_text(request)
        assert request["path"] == "/v1/chat/completions"
        assert body["model"] == "m" and body["temperature"] == 0.0 and 0 < body["max_tokens"] <= 160
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
        assert task.fields["prompt"].strip() in text  # the task
        assert WRONG_HELPER in text and WRONG_MAIN in text  # the team's code
        assert visible in text and "failed" in text  # the visible test and its result
        assert not [h for h in hidden if h in text]  # never a hidden test
        assert request["headers"]["Authorization"] == "Bearer sk-test-secret"
        assert ("the helper, who writes `aux`" in text) == (agent == "helper")

    for agent in env.agents:
        message = infos[agent]["messages"][-1]
        assert message["role"] == "user" and REPLY in message["content"]
        assert REPLY in observations[agent]["prompt"]
        name = "aux" if agent == "helper" else "longest_run_char"
        assert message["content"].rstrip().endswith(f"Your function `{name}`:")  # the usual revise request
    assert WRONG_HELPER not in observations["main"]["prompt"]  # the env itself never shows the partner's code
    assert "sk-test-secret" not in env.spec.to_json() and "OPENAI_API_KEY" not in env.spec.to_json()
    assert env.spec.to_dict()["kwargs"]["feedback"] == f"openai:{server.url}"


def test_openai_without_key_sends_no_authorization(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    wrong_first_turn(openai_env(server.url))
    assert server.requests and all("Authorization" not in r["headers"] for r in server.requests)


def test_clones_share_the_client(server: FakeServer) -> None:
    env = openai_env(server.url)
    env.reset(options={"task_id": TASK_ID})
    twins = [env.clone() for _ in range(3)]
    assert all(twin.model_feedback is env.model_feedback for twin in twins)
    for twin in twins:
        twin.step({"helper": WRONG_HELPER, "main": WRONG_MAIN})
        assert twin.clone().model_feedback is env.model_feedback
    assert len(server.requests) == 6  # each branch asked once per agent, through the one client
    assert env.agents == ["helper", "main"] and env.history == ()  # the original is untouched


def test_solved_first_turn_asks_no_model(server: FakeServer) -> None:
    env = openai_env(server.url)
    env.reset(options={"task_id": TASK_ID})
    helper = (
        "def aux(s):\n    runs = []\n    for ch in s:\n        if runs and runs[-1][0] == ch:\n"
        "            runs[-1] = (ch, runs[-1][1] + 1)\n        else:\n            runs.append((ch, 1))\n    return runs"
    )
    main = (
        "def longest_run_char(s):\n    best = ('', 0)\n    for ch, n in aux(s):\n"
        "        if n > best[1]:\n            best = (ch, n)\n    return best"
    )
    _, _, terminations, _, _ = env.step({"helper": helper, "main": main})
    assert all(terminations.values()) and server.requests == []


@pytest.mark.parametrize(("mode", "cause"), [("500", "HTTP 500"), ("malformed", "not JSON"), ("no_choices", "choices")])
def test_server_errors_raise_feedback_error(server: FakeServer, mode: str, cause: str) -> None:
    server.mode = mode
    env = openai_env(server.url)
    with pytest.raises(FeedbackError, match=cause) as info:
        wrong_first_turn(env)
    assert f"{server.url}/chat/completions" in str(info.value)


def test_refused_connection_raises_quickly() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = OpenAIFeedbackModel(f"http://127.0.0.1:{port}/v1", timeout_s=5.0)
    start = time.monotonic()
    with pytest.raises(FeedbackError, match=f"127.0.0.1:{port}/v1/chat/completions.*refused"):
        client.complete([{"role": "user", "content": "hi"}])
    assert time.monotonic() - start < 5.0


def test_silent_server_times_out() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        client = OpenAIFeedbackModel(url, timeout_s=0.5)
        start = time.monotonic()
        with pytest.raises(FeedbackError, match="timed out after 0.5 s") as info:
            client.complete([{"role": "user", "content": "hi"}])
    assert time.monotonic() - start < 5.0 and url in str(info.value)


def test_long_replies_are_clipped(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(OpenAIFeedbackModel, "complete", lambda self, messages: "x" * 10_000)
    _, _, _, _, infos = wrong_first_turn(openai_env(server.url))
    content = infos["main"]["messages"][-1]["content"]
    assert "x" * 1497 + "..." in content and "x" * 1501 not in content


# ---------------------------------------------------------------- refused values
@pytest.mark.parametrize(
    "feedback", ["hf:", "hf:   ", "foo", "openai:notaurl", "openai:", "openai:ftp://host/v1", "level:", "", "HF:x"]
)
def test_bad_feedback_values_are_refused(feedback: str) -> None:
    with pytest.raises(ValueError, match="feedback must be one of .*'level', 'plain', 'hf:.*'openai:"):
        make("coop_coding-v0", max_turns=2, feedback=feedback)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"feedback_model": ""}, "feedback_model"),
        ({"feedback_timeout_s": 0}, "feedback_timeout_s"),
        ({"feedback_max_tokens": 0}, "feedback_max_tokens"),
        ({"feedback_max_tokens": 1.5}, "feedback_max_tokens"),
    ],
)
def test_bad_feedback_settings_are_refused(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make("coop_coding-v0", feedback="openai:http://127.0.0.1:1/v1", **kwargs)


def test_named_feedback_loads_nothing_at_construction() -> None:
    env = make("coop_coding-v0", max_turns=2, feedback="hf:/no/such/model")
    assert isinstance(env.model_feedback, HFFeedbackModel) and not env.model_feedback.loaded
    assert make("coop_coding-v0", feedback="level").model_feedback is None


# ---------------------------------------------------------------- a Hugging Face model (the embedded one)
def test_hf_feedback_with_the_embedded_model() -> None:
    pytest.importorskip("transformers")
    from baselines.lm.embedded import EMBEDDED_DIR

    by_name = make("coop_coding-v0", max_turns=2, feedback="hf:embedded")
    by_name.reset(options={"task_id": TASK_ID})
    twin = by_name.clone()  # cloned before the model loads: still one model
    _, _, _, _, infos = by_name.step({"helper": WRONG_HELPER, "main": WRONG_MAIN})
    model = by_name.model_feedback
    assert isinstance(model, HFFeedbackModel) and model.loaded and model.resolved == str(EMBEDDED_DIR)
    assert twin.model_feedback is model
    _, _, _, _, twin_infos = twin.step({"helper": WRONG_HELPER, "main": WRONG_MAIN})

    by_path = make("coop_coding-v0", max_turns=2, feedback=f"hf:{EMBEDDED_DIR}", feedback_max_tokens=160)
    _, _, _, _, path_infos = wrong_first_turn(by_path)
    for agent in ("helper", "main"):
        message = infos[agent]["messages"][-1]["content"]
        review = message.split("\n\n")[1]
        assert message.startswith("Feedback from a reviewer") and review.strip() and "(The reviewer" not in review
        assert message == twin_infos[agent]["messages"][-1]["content"]  # greedy: the same text twice
        assert message == path_infos[agent]["messages"][-1]["content"]  # the name resolves to the same model


def test_hf_feedback_with_a_missing_model_fails_clearly() -> None:
    pytest.importorskip("transformers")
    env = make("coop_coding-v0", max_turns=2, feedback="hf:/no/such/model")
    with pytest.raises(FeedbackError, match="hf:/no/such/model"):
        wrong_first_turn(env)


def test_hf_feedback_without_transformers_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'llm-coop-envs\[train\]'"):
        HFFeedbackModel("embedded").complete([{"role": "user", "content": "hi"}])


def test_copies_and_pickles_keep_one_model(server: FakeServer) -> None:
    env = openai_env(server.url)
    assert copy.deepcopy(env.model_feedback) is env.model_feedback
    hf = HFFeedbackModel("embedded")
    again = pickle.loads(pickle.dumps(hf))
    assert isinstance(again, HFFeedbackModel) and again.source == "hf:embedded" and not again.loaded


def test_garbled_http_reply_raises_feedback_error() -> None:
    with socket.socket() as garbler:
        garbler.bind(("127.0.0.1", 0))
        garbler.listen(1)
        url = f"http://127.0.0.1:{garbler.getsockname()[1]}/v1"

        def answer() -> None:
            connection, _ = garbler.accept()
            with connection:
                connection.recv(65536)
                connection.sendall(b"NOT HTTP AT ALL\r\n\r\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        with pytest.raises(FeedbackError, match="BadStatusLine") as info:
            OpenAIFeedbackModel(url, timeout_s=5.0).complete([{"role": "user", "content": "hi"}])
        thread.join(5)
    assert url in str(info.value)
