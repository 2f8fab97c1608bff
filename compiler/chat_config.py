"""``mlc-chat-config.json`` and tokenizer files, as mlc-llm's ``interface/gen_config.py`` writes them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lowbit.architectures import Architecture
from lowbit.artifact import CHAT_CONFIG, read_json, read_text
from lowbit.errors import LowbitError

MLC_CHAT_CONFIG_VERSION = "0.1.0"
# gen_config.py TOKENIZER_FILES, plus the HF chat template that newer tokenizers keep apart
TOKENIZER_FILES = (
    "tokenizer.model", "tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json",
    "tokenizer_config.json",
)
SYSTEM_DEFAULTS = {  # protocol/mlc_chat_config.py MLC_CHAT_SYSTEM_DEFAULT
    "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "temperature": 1.0,
    "presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0, "top_p": 1.0,
}
_ROLE_TEMPLATES = {"user": "{user_message}", "assistant": "{assistant_message}", "tool": "{tool_message}"}


def _conversation(name: str, **fields) -> dict:
    """A ``Conversation`` dumped with the defaults of ``protocol/conversation_protocol.py``."""
    conv = {
        "name": name, "system_template": "{system_message}", "system_message": "",
        "system_prefix_token_ids": None, "add_role_after_system_message": True, "roles": {},
        "role_templates": dict(_ROLE_TEMPLATES), "messages": [], "seps": [""],
        "role_content_sep": "", "role_empty_sep": "", "stop_str": [], "stop_token_ids": [],
        "strip_reasoning_in_history": False, "function_string": "", "use_function_calling": False,
    }
    conv.update(fields)
    return conv


CONV_TEMPLATES = {  # conversation_template/registry.py
    "chatml": _conversation(
        "chatml",
        system_template="<|im_start|>system\n{system_message}<|im_end|>\n",
        system_message="A conversation between a user and an LLM-based AI assistant. The "
        "assistant gives helpful and honest answers.",
        roles={"user": "<|im_start|>user", "assistant": "<|im_start|>assistant"},
        seps=["<|im_end|>\n"], role_content_sep="\n", role_empty_sep="\n",
        stop_str=["<|im_end|>"], stop_token_ids=[2],
    ),
    "LM": _conversation(
        "LM", roles={"user": "", "assistant": ""}, stop_token_ids=[2], system_prefix_token_ids=[1]
    ),
}


def pick_conv_template(folder: Path, name: str | None, default: str | Mapping[str, Any]) -> dict:
    """The named template, or chatml when the model's chat template uses ``<|im_start|>``, else
    ``default`` (the architecture's: a name, or its own template's ``Conversation`` fields)."""
    if name is None:
        texts = [read_text(p, "tokenizer file") for p in (folder / "chat_template.jinja", folder / "tokenizer_config.json")
                 if p.is_file()]
        if any("<|im_start|>" in t for t in texts):
            name = "chatml"
        elif isinstance(default, Mapping):
            return _conversation(**default)
        else:
            name = default
    if name not in CONV_TEMPLATES:
        raise LowbitError(f"unknown conv template {name!r} (available: {', '.join(CONV_TEMPLATES)})")
    return CONV_TEMPLATES[name]


def _tokenizer_info(folder: Path) -> dict:
    """``TokenizerInfo``: byte-level BPE (GPT-2 style) or byte-fallback (SentencePiece style)."""
    path = folder / "tokenizer.json"
    tokenizer = read_json(path, "tokenizer") if path.is_file() else {}
    decoder = (tokenizer.get("decoder") or {}) if isinstance(tokenizer, dict) else {}
    if not isinstance(decoder, dict):
        raise LowbitError(f"{path}: 'decoder' is not an object")
    parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    kinds = {d.get("type") for d in parts if isinstance(d, dict)} if isinstance(parts, list) else set()
    if "ByteLevel" in kinds:
        return {"token_postproc_method": "byte_level", "prepend_space_in_encode": False, "strip_space_in_decode": False}
    return {"token_postproc_method": "byte_fallback", "prepend_space_in_encode": False, "strip_space_in_decode": "Strip" in kinds}


def _active_vocab_size(folder: Path, vocab_size: int) -> int:
    if not (folder / "tokenizer.json").is_file():
        return vocab_size
    from lowbit.models import load_tokenizer

    return len(load_tokenizer(folder))


def write_chat_config(
    folder: Path, config: dict, arch: Architecture, scheme_name: str, out: Path,
    conv_template: str | None,
) -> dict:
    """Write ``mlc-chat-config.json`` into ``out`` and copy the tokenizer files; return the dict."""
    pair = [(folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")]
    if any(pair) and not all(pair):  # the runtime reads both: one alone is a damaged folder
        have, lack = ("tokenizer.json", "tokenizer_config.json")[::1 if pair[0] else -1]
        raise LowbitError(f"{folder} has {have} but no {lack} (the MLC folder needs both)")
    model_config = arch.mlc_model_config(config)
    chat: dict = {
        "version": MLC_CHAT_CONFIG_VERSION,
        "model_type": arch.model_type,
        "quantization": scheme_name,
        "model_config": model_config,
        "vocab_size": model_config["vocab_size"],
        "context_window_size": model_config["context_window_size"],
        "sliding_window_size": -1,
        "prefill_chunk_size": model_config["prefill_chunk_size"],
        "attention_sink_size": -1,
        "tensor_parallel_shards": 1,
        "pipeline_parallel_stages": 1,
        "active_vocab_size": _active_vocab_size(folder, model_config["vocab_size"]),
        "temperature": None, "presence_penalty": None, "frequency_penalty": None,
        "repetition_penalty": None, "top_p": None,
        "tokenizer_files": [],
        "tokenizer_info": _tokenizer_info(folder),
        "conv_template": pick_conv_template(folder, conv_template, arch.conv_template),
        "pad_token_id": None, "bos_token_id": None, "eos_token_id": None,
        "model_task": "chat",
        "embedding_metadata": None,
    }
    for fname in ("generation_config.json", "config.json"):  # first file that sets a key wins
        path = folder / fname
        extra = read_json(path, "model config") if path.is_file() else {}
        if not isinstance(extra, dict):
            raise LowbitError(f"{path} is not a JSON object")
        for key, value in extra.items():
            if key in chat and chat[key] is None and key != "embedding_metadata":
                chat[key] = value
    for key, value in SYSTEM_DEFAULTS.items():
        if chat[key] is None:
            chat[key] = value
    for fname in TOKENIZER_FILES:
        if (folder / fname).is_file():
            shutil.copy2(folder / fname, out / fname)
            chat["tokenizer_files"].append(fname)
    if (folder / "chat_template.jinja").is_file():  # transformers ≥ 4.x keeps it apart
        shutil.copy2(folder / "chat_template.jinja", out / "chat_template.jinja")
    (out / CHAT_CONFIG).write_text(json.dumps(chat, indent=2))
    return chat
