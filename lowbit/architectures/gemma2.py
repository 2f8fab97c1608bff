"""Gemma 2: a GQA decoder with GELU-tanh MLPs, four RMSNorms per layer (before and after attention
and the MLP) that scale by ``1 + w``, attention and final-logit soft-capping, a query scale of
``query_pre_attn_scalar^-1/2``, and sliding-window attention on alternate layers
(``layer_types``).

As mlc-llm's ``model/gemma2/``: Llama's names and fusions (``qkv_proj``, ``gate_up_proj``), the
tied embedding as the lm_head, and every norm stored as ``1 + w``. Calibration works on the HF
modules: the norms that feed linears are ``input_layernorm`` (q/k/v) and
``pre_feedforward_layernorm`` (gate/up); the post-norms sit after o and down, where no LET pair
reaches. GELU(gate) · up is linear in each ``up`` channel, so up → down is exact as in SwiGLU.
"""

from __future__ import annotations

from dataclasses import replace

from lowbit.architectures.base import Architecture, MlcParam, NormGroup
from lowbit.architectures.llama import LAYOUT as LLAMA_LAYOUT
from lowbit.architectures.llama import (
    MAX_BATCH_SIZE,
    context_window,
    decoder_params,
    head_dim,
    hf_config_common,
    rope_theta,
)
from lowbit.errors import LowbitError

# Llama's layout, but the MLP reads the pre-feedforward norm (the post-attention one sits after o)
LAYOUT = replace(
    LLAMA_LAYOUT,
    norm_groups=(LLAMA_LAYOUT.norm_groups[0],
                 NormGroup("fc1", "pre_feedforward_layernorm", ("mlp.gate_proj", "mlp.up_proj"))),
    norm_offset=1.0,
)

NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
         "post_feedforward_layernorm")

# mlc-llm's conversation_template/gemma.py ("gemma_instruction"), for folders without a chat template
CONV_TEMPLATE = {
    "name": "gemma_instruction",
    "system_template": "{system_message}",
    "roles": {"user": "<start_of_turn>user", "assistant": "<start_of_turn>model"},
    "seps": ["<end_of_turn>\n"],
    "role_content_sep": "\n",
    "role_empty_sep": "\n",
    "system_prefix_token_ids": [2],
    "stop_str": ["<end_of_turn>"],
    "stop_token_ids": [1, 107],
}


def layer_types(config: dict) -> list[str]:
    """Each layer's attention: transformers' ``layer_types``, or Gemma 2's default (even layers
    sliding, odd layers full)."""
    n = config["num_hidden_layers"]
    types = config.get("layer_types") or ["sliding_attention" if i % 2 == 0 else "full_attention"
                                          for i in range(n)]
    return list(types)


def mlc_params(config: dict) -> list[MlcParam]:
    """Llama's parameters (q/k/v and gate/up fused, tied embedding) with Gemma's four norms per
    layer, every norm stored as ``1 + w``."""
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        raise LowbitError(f"lowbit's gemma2 model has no RoPE scaling; this model has {rope.get('rope_type')!r}")
    if config.get("attention_bias"):
        raise LowbitError("MLC's gemma2 model has no attention biases; this model has them")
    hidden = config["hidden_size"]
    params = []
    for p in decoder_params(config, "qkv_proj", qkv_bias=False):
        if p.kind != "plain":
            params.append(p)
        elif p.name.endswith("input_layernorm.weight"):  # a layer's norms, in MLC's order
            layer = p.name.removesuffix("input_layernorm.weight")
            params += [MlcParam(f"{layer}{n}.weight", "plain", (f"{layer}{n}.weight",), (hidden,), offset=1.0)
                       for n in NORMS]
        elif p.name == "model.norm.weight":
            params.append(MlcParam(p.name, "plain", p.sources, p.rows, offset=1.0))
    return params


def mlc_model_config(config: dict) -> dict:
    """``model_config`` as MLC's ``Gemma2Config`` writes it, with the context window kept (MLC
    caps it at the sliding window) and ``layer_types``."""
    ctx, window = context_window(config), config.get("sliding_window") or -1
    return {
        "hidden_size": config["hidden_size"],
        "intermediate_size": config["intermediate_size"],
        "attention_bias": False,
        "num_attention_heads": config["num_attention_heads"],
        "num_key_value_heads": config.get("num_key_value_heads") or config["num_attention_heads"],
        "head_dim": head_dim(config),
        "num_hidden_layers": config["num_hidden_layers"],
        "rms_norm_eps": config["rms_norm_eps"],
        "vocab_size": config["vocab_size"],
        "hidden_activation": config.get("hidden_activation") or config.get("hidden_act") or "gelu_pytorch_tanh",
        "position_embedding_base": rope_theta(config),
        "context_window_size": ctx,
        "prefill_chunk_size": min(ctx, 8192, *([window] if window > 0 else [])),
        "tensor_parallel_shards": 1,
        "max_batch_size": MAX_BATCH_SIZE,
        "attn_logit_softcapping": config.get("attn_logit_softcapping"),
        "final_logit_softcapping": config.get("final_logit_softcapping"),
        "query_pre_attn_scalar": config["query_pre_attn_scalar"],
        "sliding_window": window,
        "layer_types": layer_types(config),
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", True)),
    }


def hf_config_from_mlc(mc: dict) -> dict:
    window = mc.get("sliding_window", -1)
    return {
        **hf_config_common("gemma2", mc, mc["position_embedding_base"]),
        "hidden_activation": mc["hidden_activation"],
        "attn_logit_softcapping": mc["attn_logit_softcapping"],
        "final_logit_softcapping": mc["final_logit_softcapping"],
        "query_pre_attn_scalar": mc["query_pre_attn_scalar"],
        "sliding_window": window if window > 0 else None,
        "layer_types": mc["layer_types"],
        "pad_token_id": None,
    }


ARCHITECTURE = Architecture(
    model_type="gemma2",
    layout=LAYOUT,
    mlc_params=mlc_params,
    mlc_model_config=mlc_model_config,
    hf_config_from_mlc=hf_config_from_mlc,
    model="lowbit.compiler.models.gemma2:Gemma2ForCausalLM",
    conv_template=CONV_TEMPLATE,
    description="Gemma 2: soft-capped attention and logits, 1 + w pre/post norms, alternate "
    "sliding-window layers (CPU targets)",
)
