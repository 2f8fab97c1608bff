"""The app in-process on the tiny model: loading, a full queue, the request models, CLI errors."""

from __future__ import annotations

import threading
import time

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from pydantic import ValidationError

from lowbit.cli import main
from lowbit.runtime.batching import Request
from lowbit.runtime.engine import GenerationConfig
from lowbit.serve import protocol
from lowbit.serve.app import ServeArgs, Server, create_app


def _wait(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_loading_then_a_full_queue_get_503_with_retry_after(tiny_chat, monkeypatch):
    release, load = threading.Event(), Server.load

    def slow_load(self):
        release.wait(60)
        load(self)

    monkeypatch.setattr(Server, "load", slow_load)
    app = create_app(ServeArgs(tiny_chat.mlc_dir, tiny_chat.lib, max_batch=1, max_queue=1))
    with TestClient(app) as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.json() == {"status": "loading"} and r.headers["retry-after"]
        r = c.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["code"] == "loading"
        release.set()
        _wait(lambda: c.get("/health").status_code == 200)

        batch = app.state.server.batch
        ids = batch.engine.tokenizer.encode("A long story:")
        running = batch.submit(Request(ids, GenerationConfig(5000)), lambda ev: None)
        _wait(lambda: batch.snapshot().running == 1)
        queued = batch.submit(Request(ids, GenerationConfig(4)), lambda ev: None)
        r = c.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "queue_full"
        batch.cancel(running)
        batch.cancel(queued)
        _wait(lambda: batch.snapshot().running == batch.snapshot().queued == 0)
        r = c.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
        metrics = c.get("/metrics").text
        assert 'lowbit_requests_total{endpoint="/v1/completions",status="503"} 2.0' in metrics


@pytest.mark.parametrize("body,field", [
    ({"messages": [{"role": "user", "content": "x"}], "functions": [{"name": "f"}]}, "functions"),
    ({"messages": [{"role": "user", "content": "x"}], "audio": {"voice": "alloy"}}, "audio"),
    ({"messages": [{"role": "user", "content": "x"}], "prediction": {"type": "content"}}, "prediction"),
])
def test_fields_not_supported_are_refused_by_name(body, field):
    with pytest.raises(ValidationError) as e:
        protocol.ChatCompletionRequest.model_validate(body)
    assert e.value.errors()[0]["type"] == "not_supported" and e.value.errors()[0]["ctx"]["field"] == field


def test_defaults_clients_send_are_accepted():
    req = protocol.ChatCompletionRequest.model_validate({
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
        "logprobs": False, "presence_penalty": 0, "frequency_penalty": 0.0, "tools": [], "stop": "END",
        "functions": [], "service_tier": "auto", "response_format": {"type": "text"}, "tool_choice": "none",
        "max_completion_tokens": 5, "max_tokens": 9,
    })
    assert req.messages[0].text() == "ab" and req.stop == ["END"] and req.token_budget == 5
    assert protocol.CompletionRequest.model_validate({"prompt": "x", "stop": None}).stop == []
    with pytest.raises(ValidationError):
        protocol.CompletionRequest.model_validate({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]})


@pytest.mark.parametrize("body,message", [
    ({"top_logprobs": 3}, "top_logprobs needs logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "less than or equal to 20"),
    ({"presence_penalty": 2.5}, "less than or equal to 2"),
    ({"logit_bias": {"12": 101}}, "[-100, 100]"),
    ({"logit_bias": {"x": 1}}, "token ids"),
    ({"tool_choice": "required"}, "tool_choice needs tools"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}],
      "tool_choice": {"type": "function", "function": {"name": "g"}}}, "not in tools"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "pattern"),
    ({"response_format": {"type": "json_schema"}}, "json_schema is given exactly"),
    ({"response_format": {"type": "xml"}}, "json_schema"),
])
def test_bad_sampling_logprobs_tools_and_formats_are_refused(body, message):
    with pytest.raises(ValidationError) as e:
        protocol.ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}], **body})
    assert message in str(e.value)


def test_null_means_the_default():
    """Clients (LangChain, some SDKs) send null for every field they leave unset."""
    nulls = dict.fromkeys(("logprobs", "top_logprobs", "parallel_tool_calls", "presence_penalty",
                           "frequency_penalty", "n", "stream", "logit_bias", "tools", "tool_choice",
                           "response_format", "seed", "max_tokens"))
    req = protocol.ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}], **nulls})
    assert (req.logprobs, req.parallel_tool_calls, req.presence_penalty, req.n, req.stream) == (False, True, 0.0, 1, False)
    assert protocol.CompletionRequest.model_validate({"prompt": "x", "echo": None, "logprobs": None}).echo is False


def test_completion_max_tokens_0_needs_echo():
    with pytest.raises(ValidationError, match="needs echo"):
        protocol.CompletionRequest.model_validate({"prompt": "x", "max_tokens": 0})
    assert protocol.CompletionRequest.model_validate({"prompt": "x", "max_tokens": 0, "echo": True}).max_tokens == 0


def test_serve_refuses_a_missing_library_in_one_line(tiny_chat, tmp_path):
    result = CliRunner().invoke(main, ["serve", str(tiny_chat.mlc_dir), "--model-lib", str(tmp_path / "no.so")])
    assert result.exit_code == 1 and result.output.strip().count("\n") == 0
    assert "does not exist" in result.output
    result = CliRunner().invoke(main, ["serve", str(tmp_path), "--model-lib", str(tiny_chat.lib)])
    assert result.exit_code == 1 and "mlc-chat-config.json" in result.output
