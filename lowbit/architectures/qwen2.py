"""Qwen2: a Llama-style decoder with q/k/v biases. As mlc-llm's ``model/qwen2/``: q, k, v fuse
into ``c_attn`` with its bias; the rest is Llama's map (:mod:`lowbit.architectures.llama`)."""

from __future__ import annotations

from lowbit.architectures.base import Architecture, MlcParam
from lowbit.architectures.llama import (
    LAYOUT,
    MAX_BATCH_SIZE,
    context_window,
    decoder_params,
    head_dim,
    hf_config_common,
    rope_theta,
)

QKV_NAME = "c_attn"


def mlc_params(config: dict) -> list[MlcParam]:
    return decoder_params(config, QKV_NAME, qkv_bias=True)


def mlc_model_config(config: dict) -> dict:
    """``model_config`` as MLC's ``QWen2Config.asdict()`` writes it."""
    ctx = context_window(config)
    return {
        "hidden_act": config.get("hidden_act", "silu"),
        "hidden_size": config["hidden_size"],
        "intermediate_size": config["intermediate_size"],
        "num_attention_heads": config["num_attention_heads"],
        "num_hidden_layers": config["num_hidden_layers"],
        "num_key_value_heads": config.get("num_key_value_heads") or config["num_attention_heads"],
        "rms_norm_eps": config["rms_norm_eps"],
        "rope_theta": rope_theta(config),
        "vocab_size": config["vocab_size"],
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
        "context_window_size": ctx,
        "prefill_chunk_size": min(ctx, 8192),
        "tensor_parallel_shards": 1,
        "head_dim": head_dim(config),
        "dtype": "float32",
        "max_batch_size": MAX_BATCH_SIZE,
    }


def hf_config_from_mlc(mc: dict) -> dict:
    return hf_config_common("qwen2", mc, mc["rope_theta"])


ARCHITECTURE = Architecture(
    model_type="qwen2",
    layout=LAYOUT,
    mlc_params=mlc_params,
    mlc_model_config=mlc_model_config,
    hf_config_from_mlc=hf_config_from_mlc,
    model="lowbit.compiler.models.llama:LlamaForCausalLM",
    model_options={"qkv_name": QKV_NAME, "qkv_bias": True},
    description="Qwen2 / Qwen2.5: q/k/v biases",
)
