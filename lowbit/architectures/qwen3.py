"""Qwen3: Qwen2's decoder without q/k/v biases, plus a per-head RMSNorm on q and on k (after
the projection, before RoPE) and a ``head_dim`` that may differ from hidden / heads. As
mlc-llm's ``model/qwen3/``: q, k, v fuse into ``c_attn``; ``self_attn.q_norm.weight`` and
``self_attn.k_norm.weight`` [head_dim] keep their HF names. The norms sit after the
projections, so the calibration layout (which linears share an input) is Llama's."""

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
from lowbit.errors import LowbitError

QKV_NAME = "c_attn"


def mlc_params(config: dict) -> list[MlcParam]:
    """Llama's map with ``c_attn``, and each layer's q/k norms after ``o_proj`` (MLC's order)."""
    if config.get("attention_bias"):
        raise LowbitError("lowbit's qwen3 model has no attention biases; this model has them")
    params = decoder_params(config, QKV_NAME, qkv_bias=False)
    hd = head_dim(config)
    out = []
    for p in params:
        out.append(p)
        if p.name.endswith(".self_attn.o_proj"):
            attn = p.name.rsplit(".", 1)[0]
            out += [MlcParam(f"{attn}.{norm}.weight", "plain", (f"{attn}.{norm}.weight",), (hd,))
                    for norm in ("q_norm", "k_norm")]
    return out


def mlc_model_config(config: dict) -> dict:
    """``model_config`` as MLC's ``Qwen3Config.asdict()`` writes it."""
    ctx = context_window(config)
    return {
        "hidden_act": config.get("hidden_act", "silu"),
        "hidden_size": config["hidden_size"],
        "intermediate_size": config["intermediate_size"],
        "attention_bias": bool(config.get("attention_bias", False)),
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
        "weight_block_size": None,
    }


def hf_config_from_mlc(mc: dict) -> dict:
    return {**hf_config_common("qwen3", mc, mc["rope_theta"]), "attention_bias": False}


ARCHITECTURE = Architecture(
    model_type="qwen3",
    layout=LAYOUT,
    mlc_params=mlc_params,
    mlc_model_config=mlc_model_config,
    hf_config_from_mlc=hf_config_from_mlc,
    model="lowbit.compiler.models.qwen3:Qwen3ForCausalLM",
    model_options={"qkv_name": QKV_NAME},
    description="Qwen3: per-head q/k norms",
)
