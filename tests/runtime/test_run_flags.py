"""`lowbit run`'s --chat-template, --system and --stop, and `convert --conv-template`, against
transformers (chat template + greedy generate) on the tiny chat model."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from lowbit.cli import main

MAX_NEW = 24


@pytest.fixture(scope="module")
def hf(tiny_chat):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat.hf_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_chat.hf_dir, dtype=torch.float32).eval()
    return tokenizer, model


def _greedy(hf, ids: list[int], stop_id: int | None = None) -> str:
    tokenizer, model = hf
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=0,
                             eos_token_id=stop_id)
    return tokenizer.decode(out[0, len(ids):].tolist(), skip_special_tokens=True)


def _run(tiny_chat, *flags: str) -> str:
    result = CliRunner().invoke(main, ["run", str(tiny_chat.mlc_dir), "--model-lib", str(tiny_chat.lib),
                                       "--temperature", "0", "--max-new-tokens", str(MAX_NEW), *flags])
    assert result.exit_code == 0, result.output
    return result.stdout.removesuffix("\n")


def test_chat_template_and_system(tiny_chat, hf):
    """--chat-template wraps the prompt as a user turn after --system, as apply_chat_template does."""
    tokenizer, _ = hf
    messages = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Best colour?"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    want = _greedy(hf, tokenizer(text, add_special_tokens=False).input_ids, tokenizer.convert_tokens_to_ids("<|im_end|>"))
    assert _run(tiny_chat, "--chat-template", "--system", messages[0]["content"], "--prompt", "Best colour?") == want
    plain = _greedy(hf, tokenizer("Best colour?").input_ids)
    assert want != plain  # the template made a difference


def test_stop_string_cuts_before_it(tiny_chat, hf):
    tokenizer, _ = hf
    full = _greedy(hf, tokenizer("Once upon a time").input_ids)
    assert _run(tiny_chat, "--prompt", "Once upon a time") == full
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert _run(tiny_chat, "--prompt", "Once upon a time", "--stop", stop) == full[: full.index(stop)]


@pytest.mark.parametrize(("flag", "name"), [([], "chatml"), (["--conv-template", "LM"], "LM")])
def test_convert_conv_template(tiny_chat, tmp_path, flag, name):
    """The bundled tokenizer's ChatML template is detected; --conv-template overrides it."""
    out = tmp_path / "mlc"
    result = CliRunner().invoke(main, ["convert", str(tiny_chat.hf_dir), "--scheme", "q0f32", "-o", str(out), *flag])
    assert result.exit_code == 0, result.output
    conv = json.loads((out / "mlc-chat-config.json").read_text())["conv_template"]
    assert conv["name"] == name
    assert conv["roles"]["user"] == ("<|im_start|>user" if name == "chatml" else "")


def test_unknown_conv_template_is_one_line(tiny_chat, tmp_path):
    result = CliRunner().invoke(main, ["convert", str(tiny_chat.hf_dir), "--scheme", "q0f32", "-o", str(tmp_path / "m"),
                                       "--conv-template", "vicuna"])
    assert result.exit_code != 0 and "unknown conv template 'vicuna'" in result.output
    assert not (tmp_path / "m").exists()
