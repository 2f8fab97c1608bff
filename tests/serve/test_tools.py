"""Tool calls: parsed from Hermes-format text, forced by grammar on the tiny random model, refused
by name for a template without tools."""

from __future__ import annotations

import json
import shutil
import time

import jsonschema
import pytest
from fastapi.testclient import TestClient

from lowbit.serve.app import ServeArgs, create_app
from lowbit.serve.protocol import Tool
from lowbit.serve.tools import parse_calls

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                            "unit": {"enum": ["C", "F"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": {
             "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
             "additionalProperties": False}}}]
# A ChatML template with tools in the system turn and Hermes-style calls (as Qwen2.5's does).
HERMES = """{%- if tools %}<|im_start|>system
You may call functions. Signatures:
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}Answer a call as <tool_call>
{"name": ..., "arguments": ...}
</tool_call><|im_end|>
{% endif %}{%- for m in messages %}{%- if m.role == 'assistant' and m.tool_calls %}<|im_start|>assistant
{% for c in m.tool_calls %}<tool_call>
{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}
</tool_call>{% endfor %}<|im_end|>
{% elif m.role == 'tool' %}<|im_start|>user
<tool_response>
{{ m.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endif %}{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


def _tools() -> list[Tool]:
    return [Tool.model_validate(t) for t in TOOLS]


def test_parse_hermes_calls():
    text = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}\n'
            '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>')
    content, calls = parse_calls(text, _tools())
    assert content == "Let me check."
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].function.arguments) == {"city": "Oslo", "unit": "C"}
    assert len({c.id for c in calls}) == 2
    # an unclosed last call (the stop token came first) still counts
    _, calls = parse_calls('<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}', _tools())
    assert len(calls) == 1


@pytest.mark.parametrize("text", ["no calls here", '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>',
                                  "<tool_call>\nnot json\n</tool_call>", '<tool_call>\n["get_time"]\n</tool_call>'])
def test_text_that_is_not_a_valid_call_stays_content(text):
    assert parse_calls(text, _tools()) == (text, [])


@pytest.fixture(scope="module")
def hermes_client(tiny_chat, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hermes") / "mlc"
    shutil.copytree(tiny_chat.mlc_dir, folder)
    (folder / "chat_template.jinja").write_text(HERMES)
    app = create_app(ServeArgs(folder, tiny_chat.lib, context_window=1024))
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield client


def _ask(client, stream: bool = False, **body):
    req = {"messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": TOOLS, "temperature": 1.0,
           "max_tokens": 200, "stream": stream, **body}
    return client.post("/v1/chat/completions", json=req)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_required_call_parses_and_its_arguments_follow_the_schema(hermes_client, seed):
    r = _ask(hermes_client, tool_choice="required", parallel_tool_calls=False, seed=seed)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    schema = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}[call["function"]["name"]]
    jsonschema.validate(json.loads(call["function"]["arguments"]), schema)


def test_a_named_call_streams_as_one_tool_call_delta(hermes_client):
    choice = {"type": "function", "function": {"name": "get_time"}}
    r = _ask(hermes_client, stream=True, tool_choice=choice, seed=5)
    lines = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    deltas = [c for chunk in lines for c in chunk["choices"]]
    calls = [tc for c in deltas for tc in c["delta"].get("tool_calls") or []]
    assert len(calls) >= 1 and all(tc["function"]["name"] == "get_time" for tc in calls)
    assert [tc["index"] for tc in calls] == list(range(len(calls)))
    assert json.loads(calls[0]["function"]["arguments"])["zone"] in ("UTC", "CET")
    assert deltas[-1]["finish_reason"] == "tool_calls"


def test_the_template_sees_the_tools_and_earlier_calls(hermes_client):
    history = [{"role": "user", "content": "Weather in Oslo?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "C"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "12 C, rain"}]
    plain = _ask(hermes_client, messages=history[:1], tools=None, max_tokens=1).json()["usage"]["prompt_tokens"]
    with_tools = _ask(hermes_client, messages=history[:1], max_tokens=1).json()["usage"]["prompt_tokens"]
    after = _ask(hermes_client, messages=history, max_tokens=1).json()["usage"]["prompt_tokens"]
    assert plain < with_tools < after


def test_tools_on_a_template_without_them_are_refused_by_name(tiny_chat):
    app = create_app(ServeArgs(tiny_chat.mlc_dir, tiny_chat.lib, context_window=1024))
    with TestClient(app) as client:
        while client.get("/health").status_code != 200:
            time.sleep(0.05)
        r = _ask(client)
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
    assert "does not take tools" in r.json()["error"]["message"]
