"""`lowbit serve` live on 127.0.0.1 with the bundled model compiled for CPU: the official openai
client and plain HTTP, outputs equal to `lowbit run`, batching, disconnects, bad input, SIGTERM.

Every request loop is bounded in count and time and aimed at 127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from lowbit.cli import main

KEY = "test-key"
CONTEXT = 1024
PROMPTS = ["The capital of France is", "def fibonacci(n):\n", "Water boils at", "Once upon a time",
           "The three primary colors are", "import numpy as np\n", "My favourite food is", "In 1969,"]
LOWBIT = str(Path(sys.executable).parent / "lowbit")
# uvicorn drains, then re-raises the SIGTERM it caught; lowbit's handler (which removes unfinished
# outputs) turns that into exit status 128 + SIGTERM, as a shell reports a terminated process
STOPPED = 128 + signal.SIGTERM


@dataclass
class Live:
    url: str
    port: int
    model: str
    proc: subprocess.Popen
    mlc_dir: Path
    lib: Path

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(mlc_dir: Path, lib: Path, log: Path, *extra: str) -> Live:
    port = _free_port()
    argv = [LOWBIT, "serve", str(mlc_dir), "--model-lib", str(lib), "--port", str(port), "--api-key", KEY,
            "--context-window", str(CONTEXT), "--prefill-chunk", "64", *extra]
    proc = subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT)
    live = Live(f"http://127.0.0.1:{port}", port, mlc_dir.name, proc, mlc_dir, lib)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            with urllib.request.urlopen(f"{live.url}/health", timeout=5) as r:
                if r.status == 200:
                    return live
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"server did not come up: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def live(bundled_w4, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    server = _start(bundled_w4.mlc_dir, bundled_w4.lib, log, "--max-batch", "8", "--max-total-tokens", "16384")
    yield server
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(60) == STOPPED, log.read_text()[-2000:]


@pytest.fixture(scope="module")
def client(live):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=live.v1, api_key=KEY, max_retries=0, timeout=120)


def _run_cli(live: Live, prompt: str, new: int, *extra: str) -> str:
    result = CliRunner().invoke(main, ["run", str(live.mlc_dir), "--model-lib", str(live.lib), "--prompt", prompt,
                                       "--max-new-tokens", str(new), "--temperature", "0", *extra])
    assert result.exit_code == 0, result.output
    return result.stdout.removesuffix("\n")


def _post(live: Live, path: str, body: bytes | dict, key: str | None = KEY) -> tuple[int, dict, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=120)
    try:
        conn.request("POST", path, data, headers)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), json.loads(r.read() or b"{}")
    finally:
        conn.close()


def _metrics(live: Live) -> dict[str, float]:
    with urllib.request.urlopen(f"{live.url}/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    return {ln.split()[0]: float(ln.split()[1]) for ln in lines if ln.startswith("lowbit_") and "{" not in ln}


@pytest.mark.slow
def test_openai_client_equals_lowbit_run(live, client):
    new = 24
    chat = client.chat.completions.create(model=live.model, messages=[{"role": "user", "content": PROMPTS[0]}],
                                          max_tokens=new, temperature=0)
    assert chat.choices[0].message.content == _run_cli(live, PROMPTS[0], new, "--chat-template")
    assert chat.choices[0].finish_reason in ("stop", "length")
    u = chat.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens and 0 < u.completion_tokens <= new
    assert u.model_extra["extra"]["decode_tokens_per_s"] > 0 and u.model_extra["extra"]["ttft_s"] > 0

    text = client.completions.create(model=live.model, prompt=PROMPTS[1], max_tokens=new, temperature=0)
    assert text.choices[0].text == _run_cli(live, PROMPTS[1], new)
    assert text.choices[0].finish_reason == "length" and text.usage.completion_tokens == new
    stop = text.choices[0].text.split()[2]  # cut where the third word starts
    cut = client.completions.create(model=live.model, prompt=PROMPTS[1], max_tokens=new, temperature=0, stop=stop)
    assert cut.choices[0].text == text.choices[0].text[: text.choices[0].text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"

    # streamed: the same text in pieces, then the usage chunk with no choices
    stream = client.chat.completions.create(model=live.model, messages=[{"role": "user", "content": PROMPTS[0]}],
                                            max_tokens=new, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == u.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0  # the same prompt again

    pieces = list(client.completions.create(model=live.model, prompt=PROMPTS[1], max_tokens=new,
                                            temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in pieces) == text.choices[0].text
    assert pieces[-1].choices[0].finish_reason == "length"

    ids = client.completions.create(model=live.model, prompt=[504, 3575, 282, 4649, 314], max_tokens=4,
                                    temperature=0)
    assert ids.usage.prompt_tokens == 5
    n = client.chat.completions.create(model=live.model, messages=[{"role": "user", "content": "Tell me a joke"}],
                                       max_tokens=8, temperature=1.0, seed=3, n=3)
    assert [c.index for c in n.choices] == [0, 1, 2] and len({c.message.content for c in n.choices}) > 1


@pytest.mark.slow
def test_plain_http(live):
    req = urllib.request.Request(f"{live.v1}/models", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert [m["id"] for m in json.load(r)["data"]] == [live.model]
    with urllib.request.urlopen(f"{live.url}/openapi.json", timeout=10) as r:
        assert "/v1/chat/completions" in json.load(r)["paths"]
    body = {"messages": [{"role": "user", "content": PROMPTS[2]}], "max_tokens": 8, "temperature": 0, "stream": True}
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("content-type").startswith("text/event-stream")
    events = [ln for ln in r.read().decode().split("\n\n") if ln]
    conn.close()
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2].removeprefix("data: "))
    assert last["object"] == "chat.completion.chunk" and last["choices"][0]["finish_reason"] in ("stop", "length")
    status, _, plain = _post(live, "/v1/chat/completions", {**body, "stream": False})
    streamed = "".join(json.loads(e.removeprefix("data: "))["choices"][0]["delta"].get("content") or ""
                       for e in events[:-1])
    assert status == 200 and plain["choices"][0]["message"]["content"] == streamed


def _completion(live: Live, prompt: str, new: int) -> str:
    status, _, body = _post(live, "/v1/completions", {"prompt": prompt, "max_tokens": new, "temperature": 0})
    assert status == 200, body
    return body["choices"][0]["text"]


def _in_threads(fn, args: list, timeout: float = 300) -> list:
    out: list = [None] * len(args)

    def one(i):
        try:
            out[i] = fn(*args[i])
        except Exception as e:  # noqa: BLE001 - reported below
            out[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(args))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "requests did not finish in time"
    return out


@pytest.mark.slow
def test_concurrent_greedy_streams_equal_each_alone(live):
    alone = [_completion(live, p, 16) for p in PROMPTS]
    together = _in_threads(lambda p: _completion(live, p, 16), [(p,) for p in PROMPTS])
    assert together == alone


@pytest.mark.slow
def test_32_concurrent_clients_without_errors(live):
    results = _in_threads(lambda i: _completion(live, f"{PROMPTS[i % 8]} {i}", 8), [(i,) for i in range(32)])
    assert [r for r in results if not isinstance(r, str)] == []


@pytest.mark.slow
def test_disconnected_streams_free_their_kv_pages(live):
    idle = _metrics(live)
    assert idle["lowbit_requests_running"] == 0

    def hang_up(i: int) -> int:
        body = {"prompt": f"Story number {i}:", "max_tokens": 400, "temperature": 0, "stream": True}
        conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=60)
        conn.request("POST", "/v1/completions", json.dumps(body),
                     {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
        r = conn.getresponse()
        got = sum(1 for _ in range(3) if r.readline())  # a few lines of the stream
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        return got

    assert all(n == 3 for n in _in_threads(hang_up, [(i,) for i in range(4)]))
    deadline = time.monotonic() + 60
    while (m := _metrics(live))["lowbit_requests_running"] or m["lowbit_requests_queued"]:
        assert time.monotonic() < deadline, m
        time.sleep(0.2)
    assert m["lowbit_kv_pages_in_use"] == idle["lowbit_kv_pages_in_use"]
    assert m["lowbit_generated_tokens_total"] - idle["lowbit_generated_tokens_total"] < 4 * 400


BAD = [
    ("malformed JSON", "/v1/chat/completions", b'{"messages": [', 400, None),
    ("wrong type", "/v1/chat/completions", {"messages": "hi"}, 400, "messages"),
    ("negative max_tokens", "/v1/completions", {"prompt": "x", "max_tokens": -5}, 400, "max_tokens"),
    ("unknown field", "/v1/completions", {"prompt": "x", "colour": "red"}, 400, "colour"),
    ("not supported", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                               "functions": [{"name": "f"}]}, 400, "functions"),
    ("tool without a function", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                         "tools": [{"type": "function"}]}, 400, "tools.0.function"),
    ("prompt too long", "/v1/completions", {"prompt": list(range(10, 10 + CONTEXT + 10))}, 400, "prompt"),
    ("unknown model", "/v1/completions", {"prompt": "x", "model": "gpt-9"}, 404, "model"),
    ("token outside the vocabulary", "/v1/completions", {"prompt": [1, 10**7]}, 400, "prompt"),
    ("temperature out of range", "/v1/completions", {"prompt": "x", "temperature": 9}, 400, "temperature"),
    ("oversized body", "/v1/completions", {"prompt": "x" * (9 << 20)}, 413, None),
]


@pytest.mark.slow
@pytest.mark.parametrize("what,path,body,status,param", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_a_4xx_and_the_server_keeps_serving(live, what, path, body, status, param):
    got, _, reply = _post(live, path, body)
    assert got == status, reply
    error = reply["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    if what == "prompt too long":
        assert str(CONTEXT + 10) in error["message"]
    assert _completion(live, "Hello", 2)


PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "city", "hobbies"],
          "properties": {"name": {"type": "string", "maxLength": 24},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "city": {"type": "string", "maxLength": 24},
                         "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3}}}


@pytest.mark.slow
def test_json_schema_output_validates_in_10_of_10_seeded_runs(live, client):
    jsonschema = pytest.importorskip("jsonschema")
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    for seed in range(10):
        r = client.chat.completions.create(
            model=live.model, messages=[{"role": "user", "content": "Invent a person and describe them."}],
            response_format=fmt, temperature=0.8, seed=seed, max_tokens=160)
        jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)
        assert r.choices[0].finish_reason == "stop"
    from typing import Literal

    from pydantic import BaseModel, Field

    class City(BaseModel):
        name: str = Field(max_length=20)
        country: str = Field(max_length=20)

    class Cities(BaseModel):  # the client's own helper: a pydantic model as a strict json_schema
        cities: list[City] = Field(max_length=3)
        mood: Literal["happy", "sad"]

    parsed = client.chat.completions.parse(model=live.model, response_format=Cities, temperature=0, max_tokens=150,
                                           messages=[{"role": "user", "content": "Name three cities in Europe."}])
    assert isinstance(parsed.choices[0].message.parsed, Cities) and parsed.choices[0].message.parsed.cities
    obj = client.chat.completions.create(model=live.model, messages=[{"role": "user", "content": "A JSON object"}],
                                         response_format={"type": "json_object"}, temperature=0, max_tokens=60)
    assert obj.choices[0].finish_reason != "stop" or isinstance(json.loads(obj.choices[0].message.content), dict)
    status, _, err = _post(live, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                           "response_format": {"type": "json_schema", "json_schema": {
                               "name": "bad", "schema": {"type": "object", "properties": {"a": {"type": "nope"}}}}}})
    assert status == 400 and err["error"]["param"] == "response_format"


@pytest.mark.slow
def test_logprobs_equal_the_engines_log_softmax(live, client):
    """Chat logprobs and a completion's echoed prompt scores against the engine run here in-process
    on the same folder and library (what `lowbit run` runs)."""
    import numpy as np

    from lowbit.runtime.engine import Engine
    from lowbit.runtime.sampler import log_softmax

    messages = [{"role": "user", "content": PROMPTS[2]}]
    r = client.chat.completions.create(model=live.model, messages=messages, max_tokens=12, temperature=0,
                                       logprobs=True, top_logprobs=5)
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r.choices[0].message.content
    engine = Engine(live.mlc_dir, live.lib, max_batch_size=2)
    ids = engine.chat_prompt_ids(messages)
    engine.add_sequence(0)
    logits = engine.prefill(0, ids)
    token_bytes = engine.grammars.token_bytes
    for entry in content:
        lp = log_softmax(logits)
        token = int(np.argmax(logits))
        assert bytes(entry.bytes) == token_bytes(token)
        assert abs(entry.logprob - lp[token]) < 1e-4
        top = np.argsort(-lp, kind="stable")[:5]
        assert [bytes(t.bytes) for t in entry.top_logprobs] == [token_bytes(int(t)) for t in top]
        np.testing.assert_allclose([t.logprob for t in entry.top_logprobs], lp[top], atol=1e-4)
        logits = engine.decode(0, token)

    scored = client.completions.create(model=live.model, prompt=PROMPTS[3], max_tokens=0, echo=True, logprobs=2)
    lp = scored.choices[0].logprobs
    assert scored.choices[0].text == "".join(lp.tokens) == PROMPTS[3] and lp.token_logprobs[0] is None
    prompt = engine.tokenizer.encode(PROMPTS[3])
    engine.add_sequence(1)
    rows = np.stack([log_softmax(row) for row in engine.all_logits(1, prompt)])
    np.testing.assert_allclose(lp.token_logprobs[1:], rows[np.arange(len(prompt) - 1), prompt[1:]], atol=1e-4)
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(lp.tokens))]


@pytest.mark.slow
def test_logit_bias_and_penalties_change_greedy_output(live, client):
    def first(**kw):
        return client.completions.create(model=live.model, prompt=PROMPTS[0], max_tokens=16, temperature=0,
                                         logprobs=0, **kw).choices[0]

    from lowbit.runtime.tokenizer import Tokenizer

    plain = first()
    tok = Tokenizer(live.mlc_dir)
    greedy_id = tok.encode(PROMPTS[0] + plain.text)[len(tok.encode(PROMPTS[0]))]
    banned = first(logit_bias={str(greedy_id): -100})
    assert banned.logprobs.tokens[0] != plain.logprobs.tokens[0]
    forced = first(logit_bias={str(tok.encode(",")[0]): 100})
    assert set(forced.text) == {","}

    def repeated(choice) -> int:
        return len(choice.logprobs.tokens) - len(set(choice.logprobs.tokens))

    penalized = first(frequency_penalty=2.0, presence_penalty=2.0)
    assert repeated(penalized) <= repeated(plain) and (repeated(plain) == 0 or penalized.text != plain.text)
    status, _, err = _post(live, "/v1/completions", {"prompt": "x", "logit_bias": {"999999": 5}})
    assert status == 400 and err["error"]["param"] == "logit_bias"
    status, _, err = _post(live, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                          "tools": [{"type": "function", "function": {"name": "f"}}]})
    assert status == 400 and err["error"]["param"] == "tools"


@pytest.mark.slow
def test_api_key(live):
    for key in (None, "wrong"):
        status, _, reply = _post(live, "/v1/completions", {"prompt": "x", "max_tokens": 2}, key=key)
        assert status == 401 and reply["error"]["type"] == "authentication_error"
    with urllib.request.urlopen(f"{live.url}/health", timeout=10) as r:  # no key needed
        assert r.status == 200


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests(bundled_w4, tmp_path):
    server = _start(bundled_w4.mlc_dir, bundled_w4.lib, tmp_path / "server.log", "--max-batch", "2")
    body = {"prompt": PROMPTS[3], "max_tokens": 40, "temperature": 0, "stream": True}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    conn.request("POST", "/v1/completions", json.dumps(body),
                 {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    r = conn.getresponse()
    assert r.readline().startswith(b"data: ")  # streaming has started
    os.kill(server.proc.pid, signal.SIGTERM)
    rest = r.read().decode()
    assert rest.rstrip().endswith("data: [DONE]")
    assert '"finish_reason":"length"' in rest
    assert server.proc.wait(60) == STOPPED
    assert "Finished server process" in (tmp_path / "server.log").read_text()
    with pytest.raises(OSError):  # no longer listening
        urllib.request.urlopen(f"{server.url}/health", timeout=5)
