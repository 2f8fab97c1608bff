"""A tiny random Llama with the bundled model's tokenizer: HF folder → q0f32 MLC folder → ``lowbit compile``."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class TinyChat:
    hf_dir: Path
    mlc_dir: Path
    lib: Path


def _save_tiny_chat_model(path: Path) -> Path:
    """Two layers, GQA 4:2, head_dim 24, untied lm_head, the bundled model's 49152-token vocabulary."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=49152, hidden_size=96, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=24, max_position_embeddings=1024,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # logits of std ~5 instead of ~0.2: greedy margins far above fp32 noise
        model.lm_head.weight.mul_(25.0)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_chat(tmp_path_factory, bundled_dir) -> TinyChat:
    from lowbit.compiler.compile import CompileArgs, compile_model
    from lowbit.compiler.convert import ConvertArgs, convert

    root = tmp_path_factory.mktemp("tiny_chat")
    hf = _save_tiny_chat_model(root / "hf")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy2(bundled_dir / name, hf / name)
    mlc = convert(ConvertArgs(str(hf), "q0f32", root / "mlc", progress=False)).out
    lib = compile_model(CompileArgs(mlc, "llvm", root / "tiny.so"), progress=False)
    return TinyChat(hf, mlc, lib)
