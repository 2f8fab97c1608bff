"""Tokenizer, chat template and streaming detokenizer of an MLC folder (HF ``tokenizers``, jinja2).

The chat template is the model's own jinja template (``chat_template.jinja`` or the
``chat_template`` of ``tokenizer_config.json``) rendered as transformers renders it; a folder
without one falls back to the MLC ``conv_template`` of ``mlc-chat-config.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from lowbit.artifact import read_json, read_text
from lowbit.errors import LowbitError

Message = dict[str, Any]  # {"role", "content"} (+ "tool_calls", "tool_call_id" in tool conversations)


class Tokenizer:
    """Encode/decode with the folder's ``tokenizer.json``."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(folder) / "tokenizer.json"
        if not path.is_file():
            raise LowbitError(f"{folder} has no tokenizer.json")
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception
            raise LowbitError(f"{path} is not a valid tokenizer ({str(e).splitlines()[0][:200]})") from None
        config = Path(folder) / "tokenizer_config.json"
        self.config: dict = read_json(config, "tokenizer config") if config.is_file() else {}
        if not isinstance(self.config, dict):
            raise LowbitError(f"{config} is not a JSON object")

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def to_json(self) -> str:
        """The tokenizer as ``tokenizer.json`` text."""
        return self._tok.to_str()

    def token_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def special_token(self, key: str) -> str | None:
        """``bos_token``/``eos_token`` of ``tokenizer_config.json`` (a string or an AddedToken dict)."""
        value = self.config.get(key)
        return value.get("content") if isinstance(value, dict) else value


class StreamDecoder:
    """Turns a growing token list into text deltas without splitting multi-byte characters.

    Decodes a short window of recent tokens twice (with and without the new ones) and emits the
    difference, so spaces and merges that depend on neighbouring tokens come out right.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token: int) -> str:
        self.tokens.append(token)
        before = self.tokenizer.decode(self.tokens[self._prefix : self._read])
        text = self.tokenizer.decode(self.tokens[self._prefix :])
        if text.endswith("\ufffd") or len(text) <= len(before):
            return ""  # an incomplete UTF-8 sequence (or a token that decodes to nothing yet)
        self._prefix, self._read = self._read, len(self.tokens)
        return text[len(before) :]

    def text(self) -> str:
        return self.tokenizer.decode(self.tokens)


class JinjaTemplate:
    """A HF chat template, rendered with transformers' jinja settings."""

    prefix_ids: list[int] = []  # token ids before the rendered text (a jinja template writes its own BOS)

    def __init__(self, source: str, tokenizer: Tokenizer):
        import jinja2
        import jinja2.meta
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str):
            raise jinja2.exceptions.TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, indent=indent, ensure_ascii=False)
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.source = source
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise LowbitError(f"the chat template is not valid jinja (line {e.lineno}: {e.message})") from None
        self._specials = {k: tokenizer.special_token(k) for k in ("bos_token", "eos_token")}
        self.takes_tools = "tools" in jinja2.meta.find_undeclared_variables(env.parse(source))

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True,
               tools: list[dict] | None = None) -> str:
        """The prompt; ``tools``: OpenAI-shaped tool definitions, for templates that take them."""
        extra = {"tools": tools} if tools else {}
        return self._template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                     **self._specials, **extra)


class ConvTemplate:
    """MLC's ``conv_template``, rendered as MLC's JSON engine renders a chat request.

    All system messages (else the template's ``system_message``) fill ``system_template``; each
    other message adds its role's name + ``role_content_sep`` + the role template filled with the
    content + the role's separator (``seps[1]`` for the assistant when there are two); a message
    without content, and the assistant's turn at the end, add the role's name + ``role_empty_sep``.
    ``apps/native``'s ``ConvTemplate`` is the C++ twin; a test renders the same chats with both.
    """

    source = ""
    takes_tools = False

    def __init__(self, conv: dict):
        self.conv = conv
        self.prefix_ids: list[int] = list(conv.get("system_prefix_token_ids") or [])

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True,
               tools: list[dict] | None = None) -> str:
        if tools:
            raise LowbitError("an MLC conv_template takes no tools")
        c = self.conv
        systems = [m for m in messages if m["role"] == "system"]
        system = "".join("".join(_text_parts(m.get("content", ""))) for m in systems) if systems \
            else c.get("system_message", "")
        text = c.get("system_template", "{system_message}").replace("{system_message}", system, 1)
        seps = c.get("seps") or [""]
        templates = {"user": "{user_message}", "assistant": "{assistant_message}", "tool": "{tool_message}",
                     **(c.get("role_templates") or {})}
        count = 0
        turns = [m for m in messages if m["role"] != "system"]
        if add_generation_prompt:
            turns.append({"role": "assistant", "content": None})
        for m in turns:
            role = m["role"]
            if role not in c["roles"]:
                raise LowbitError(f'role "{role}" is not supported by the model\'s conv_template')
            if m.get("content") is None:
                text += c["roles"][role] + c.get("role_empty_sep", "")
                continue
            count += 1
            if c.get("add_role_after_system_message", True) or not text or count != 1:
                text += c["roles"][role] + c.get("role_content_sep", "")
            body = templates.get(role)
            for part in _text_parts(m["content"]):
                text += part if body is None else body.replace(f"{{{role}_message}}", part, 1)
            text += seps[(1 if role == "assistant" else 0) % len(seps)]
        return text


def _text_parts(content: Any) -> list[str]:
    """A message's text: a string, or OpenAI's ``[{"type": "text", "text": ...}]`` parts."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return [str(p.get("text", "")) for p in content]
    raise LowbitError("only text content is supported in messages")


def load_chat_template(folder: Path, tokenizer: Tokenizer, chat_config: dict):
    """The folder's jinja template if it has one, else its MLC ``conv_template``."""
    folder = Path(folder)
    source = None
    if (path := folder / "chat_template.jinja").is_file():
        source = read_text(path, "chat template")
    elif isinstance(tokenizer.config.get("chat_template"), str):
        source = tokenizer.config["chat_template"]
    if source is not None:
        return JinjaTemplate(source, tokenizer)
    if isinstance(chat_config.get("conv_template"), dict):
        return ConvTemplate(chat_config["conv_template"])
    raise LowbitError(f"{folder} has no chat template (no chat_template.jinja and no conv_template)")
