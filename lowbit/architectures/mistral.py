"""Mistral: Llama's decoder with sliding-window attention (v0.1: 4096; later versions have
``sliding_window: null``, plain causal attention) and its own ``head_dim``.

As mlc-llm's ``model/mistral/``: Llama's parameter map (``qkv_proj``, ``gate_up_proj``) and
calibration layout. The window reaches the relax model as ``sliding_window_size``; unlike MLC,
the context window stays ``max_position_embeddings`` and there is no attention sink, so the
compiled model attends exactly as transformers' ``MistralForCausalLM``.
"""

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

# mlc-llm's conversation_template/mistral.py ("mistral_default"), for folders without a chat template
CONV_TEMPLATE = {
    "name": "mistral_default",
    "system_template": "[INST] {system_message}",
    "system_message": "Always assist with care, respect, and truth. Respond with utmost utility yet "
    "securely. Avoid harmful, unethical, prejudiced, or negative content. Ensure replies promote "
    "fairness and positivity.",
    "roles": {"user": "[INST]", "assistant": "[/INST]", "tool": "[INST]"},
    "seps": [" "],
    "role_content_sep": " ",
    "role_empty_sep": "",
    "stop_str": ["</s>"],
    "stop_token_ids": [2],
    "system_prefix_token_ids": [1],
    "add_role_after_system_message": False,
}


def mlc_params(config: dict) -> list[MlcParam]:
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        raise LowbitError(f"lowbit's mistral model has no RoPE scaling; this model has "
                          f"{rope.get('rope_type')!r}")
    return decoder_params(config, "qkv_proj", qkv_bias=False)


def sliding_window(config: dict) -> int:
    """HF's ``sliding_window`` (a query sees the keys less than this many positions back), or -1
    (MLC's "none") when it is null."""
    return config.get("sliding_window") or -1


def mlc_model_config(config: dict) -> dict:
    """``model_config`` as MLC's ``MistralConfig.asdict()`` writes it, with the context window
    kept (MLC writes -1 when there is a sliding window) and no attention sink."""
    ctx, window = context_window(config), sliding_window(config)
    return {
        "hidden_size": config["hidden_size"],
        "intermediate_size": config["intermediate_size"],
        "num_attention_heads": config["num_attention_heads"],
        "num_hidden_layers": config["num_hidden_layers"],
        "rms_norm_eps": config["rms_norm_eps"],
        "vocab_size": config["vocab_size"],
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
        "position_embedding_base": rope_theta(config),
        "num_key_value_heads": config.get("num_key_value_heads") or config["num_attention_heads"],
        "head_dim": head_dim(config),
        "context_window_size": ctx,
        "sliding_window_size": window,
        "prefill_chunk_size": min(ctx, 8192, *([window] if window > 0 else [])),
        "attention_sink_size": 0,
        "tensor_parallel_shards": 1,
        "max_batch_size": MAX_BATCH_SIZE,
    }


def hf_config_from_mlc(mc: dict) -> dict:
    window = mc.get("sliding_window_size", -1)
    return {**hf_config_common("mistral", mc, mc["position_embedding_base"]),
            "sliding_window": window if window > 0 else None}


ARCHITECTURE = Architecture(
    model_type="mistral",
    layout=LAYOUT,
    mlc_params=mlc_params,
    mlc_model_config=mlc_model_config,
    hf_config_from_mlc=hf_config_from_mlc,
    model="lowbit.compiler.models.llama:LlamaForCausalLM",
    conv_template=CONV_TEMPLATE,
    description="Mistral: sliding-window attention, exact past the window",
)
