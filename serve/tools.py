"""Tool calling: which chat templates take tools, calls parsed out of the model's text, and the
grammar that makes the model call one (``tool_choice`` "required" or a named function).

The format is Hermes' (Qwen2.5, Qwen3, Hermes, SmolLM3 and others): each call is a JSON object
``{"name": ..., "arguments": {...}}`` between ``<tool_call>`` and ``</tool_call>`` lines. A
template that takes ``tools`` but writes calls another way is refused rather than misparsed.
"""

from __future__ import annotations

import json
import re
import uuid

from lowbit.errors import LowbitError
from lowbit.runtime.grammar import JSON_OPTIONS
from lowbit.serve.protocol import FunctionCall, NamedToolChoice, Tool, ToolCall

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*(?:" + re.escape(CLOSE) + r"|\Z)", re.DOTALL)


class ToolsNotSupported(LowbitError):
    """The model's chat template cannot take tools, or writes calls in a format not parsed here."""


def check_template(template) -> None:
    """Raise :class:`ToolsNotSupported` unless ``template`` takes tools and writes Hermes calls."""
    if not template.takes_tools:
        raise ToolsNotSupported("tools: this model's chat template does not take tools")
    if OPEN not in template.source:
        raise ToolsNotSupported("tools: this model's chat template writes tool calls in a format "
                                f"lowbit does not parse (it parses {OPEN}…{CLOSE})")


def parse_calls(text: str, tools: list[Tool]) -> tuple[str | None, list[ToolCall]]:
    """(the text outside the calls or None, the calls). Text with a block that is not a call to
    one of ``tools`` (bad JSON, unknown name) is all content, with no calls."""
    names = {t.function.name for t in tools}
    calls = []
    for match in _CALL.finditer(text):
        try:
            call = json.loads(match.group(1))
        except json.JSONDecodeError:
            return text, []
        args = call.get("arguments", call.get("parameters", {})) if isinstance(call, dict) else None
        if not isinstance(call, dict) or call.get("name") not in names or not isinstance(args, dict | str):
            return text, []
        arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        calls.append(ToolCall(id=f"call_{uuid.uuid4().hex[:24]}",
                              function=FunctionCall(name=call["name"], arguments=arguments)))
    content = _CALL.sub("", text).strip() if calls else text
    return content or None, calls


def forced_call_grammar(tools: list[Tool], choice: str | NamedToolChoice, parallel: bool) -> str:
    """A Lark grammar (llguidance's, with ``%json``) of one call, or one or more with
    ``parallel``, to the named tool or to any of ``tools``."""
    chosen = [t for t in tools if not isinstance(choice, NamedToolChoice) or t.function.name == choice.function.name]
    schemas = [{"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
                "properties": {"name": {"const": t.function.name},
                               "arguments": t.function.parameters or {"type": "object"}}}
               for t in chosen]
    schema = {**(schemas[0] if len(schemas) == 1 else {"anyOf": schemas}), "x-guidance": JSON_OPTIONS}
    repeat = ' ("\\n" call)*' if parallel else ""
    return (f"start: call{repeat}\n"
            f'call: "{OPEN}\\n" body "\\n{CLOSE}"\n'
            f"body: %json {json.dumps(schema)}\n")
