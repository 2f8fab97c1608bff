"""Tokenizer, chat templates and streaming detokenization vs transformers (the bundled tokenizer)."""

from __future__ import annotations

import pytest

from lowbit.runtime.engine import StopStrings
from lowbit.runtime.tokenizer import (
    ConvTemplate,
    JinjaTemplate,
    StreamDecoder,
    Tokenizer,
    load_chat_template,
)

TEXTS = ["Hello, world!", "  leading spaces and\ttabs\nnewlines", "naïve café — 東京 🚀🎉 ok", "<|im_start|>user"]
CHATS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Who are you?"}],
]


@pytest.fixture(scope="module")
def tokenizers(bundled_dir):
    from transformers import AutoTokenizer

    return Tokenizer(bundled_dir), AutoTokenizer.from_pretrained(bundled_dir)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_match_transformers(tokenizers, text):
    ours, hf = tokenizers
    assert ours.encode(text) == hf(text).input_ids
    assert ours.decode(ours.encode(text)) == hf.decode(hf(text).input_ids, skip_special_tokens=True)


@pytest.mark.parametrize("messages", CHATS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_jinja_template_matches_apply_chat_template(tokenizers, bundled_dir, messages, add_generation_prompt):
    ours, hf = tokenizers
    template = load_chat_template(bundled_dir, ours, {})
    assert isinstance(template, JinjaTemplate)
    ref = hf.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    assert template.render(messages, add_generation_prompt) == ref


def test_mlc_chatml_conv_template_equals_the_models_jinja(tokenizers, bundled_dir):
    from lowbit.compiler.chat_config import CONV_TEMPLATES

    ours, _ = tokenizers
    jinja = load_chat_template(bundled_dir, ours, {})
    conv = ConvTemplate(CONV_TEMPLATES["chatml"])
    assert conv.render(CHATS[1]) == jinja.render(CHATS[1])  # both ChatML, same system message


@pytest.mark.parametrize("text", TEXTS)
def test_stream_decoder_deltas_add_up(tokenizers, text):
    ours, _ = tokenizers
    stream = StreamDecoder(ours)
    deltas = [stream.push(t) for t in ours.encode(text)]
    assert "".join(deltas) == ours.decode(ours.encode(text))
    assert not any("\ufffd" in d for d in deltas)  # multi-byte characters are never split


def test_stop_strings_hold_back_partial_matches():
    stops = StopStrings(["</end>", "STOP"])
    assert stops.push("Hello <") == ("Hello ", False)
    assert stops.push("/e") == ("", False)
    assert stops.push("x") == ("</ex", False)  # not a stop string after all
    assert stops.push(" S") == (" ", False)
    assert stops.push("TOP and more") == ("", True)
    assert StopStrings([]).push("abc") == ("abc", False)
    tail = StopStrings(["##"])
    assert tail.push("a#") == ("a", False) and tail.flush() == "#"
