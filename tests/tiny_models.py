"""Tiny random Llama / Qwen2 / Qwen3 / Phi-3 / Mistral / Gemma 2 models for unit tests (imported by conftest and by tests)."""

from __future__ import annotations

from pathlib import Path

import torch


def save_tiny(path: Path, config) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random-init norms are all ones and biases (Qwen2's q/k/v) all zeros; perturb them so that
    # norm-folding bugs and dropped or misplaced biases show up.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.add_(0.5 * torch.randn_like(p))
    model.save_pretrained(path)
    return path


def tiny_llama_config(**overrides):
    """Hidden 96 (partial groups at g64/g128), GQA 4:2, head_dim 24, tied embeddings."""
    from transformers import LlamaConfig

    kw = dict(
        vocab_size=512, hidden_size=96, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=24, max_position_embeddings=256,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


def tiny_qwen2_config(**overrides):
    from transformers import Qwen2Config

    kw = dict(
        vocab_size=512, hidden_size=96, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
    )
    kw.update(overrides)
    return Qwen2Config(**kw)


def tiny_qwen3_config(**overrides):
    """Qwen3: q/k norms, head_dim 32 ≠ hidden / heads (24), GQA 4:2, untied lm_head."""
    from transformers import Qwen3Config

    kw = dict(
        vocab_size=512, hidden_size=96, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
        rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
    )
    kw.update(overrides)
    return Qwen3Config(**kw)


def tiny_phi3_config(**overrides):
    """Phi-3.5-style: fused qkv / gate_up, GQA 4:2, head_dim 24, longrope past 16 positions (of
    128: cos/sin scale sqrt(1 + ln 8 / ln 16)) with distinct short and long factors."""
    from transformers import Phi3Config

    rng = torch.Generator().manual_seed(0)
    short, long = (1 + torch.rand(12, generator=rng), 2 + 6 * torch.rand(12, generator=rng))
    kw = dict(
        vocab_size=512, hidden_size=96, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        original_max_position_embeddings=16, rope_theta=10000.0, rms_norm_eps=1e-5,
        rope_scaling={"type": "longrope", "short_factor": short.tolist(), "long_factor": long.tolist()},
        tie_word_embeddings=False, pad_token_id=None, bos_token_id=1, eos_token_id=2,
    )
    kw.update(overrides)
    return Phi3Config(**kw)


def tiny_mistral_config(**overrides):
    """Mistral: a sliding window of 8 (tests run past it), head_dim 32 ≠ hidden / heads (24), GQA
    4:2, untied lm_head."""
    from transformers import MistralConfig

    kw = dict(
        vocab_size=512, hidden_size=96, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, sliding_window=8,
    )
    kw.update(overrides)
    return MistralConfig(**kw)


def tiny_gemma2_config(**overrides):
    """Gemma 2: three layers (sliding, full, sliding) with a window of 8, head_dim 32 ≠ hidden /
    heads, a query scale of 20^-1/2 ≠ head_dim^-1/2, GQA 4:2, tied embeddings. Weights drawn with
    std 0.2 and caps of 5 (attention) and 10 (logits) put the scores and logits where the
    soft-capping changes them."""
    from transformers import Gemma2Config

    kw = dict(
        vocab_size=512, hidden_size=96, intermediate_size=160, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
        rope_theta=10000.0, rms_norm_eps=1e-6, query_pre_attn_scalar=20, sliding_window=8,
        attn_logit_softcapping=5.0, final_logit_softcapping=10.0, initializer_range=0.2,
        pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )
    kw.update(overrides)
    return Gemma2Config(**kw)
