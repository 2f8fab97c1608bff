"""Llama (Llama 1–3, incl. Llama-3 RoPE scaling; SmolLM): HF names → MLC-LLM's parameter names,
fusions and ``model_config``, and the decoder block's calibration layout.

As mlc-llm's ``model/llama/llama_model.py`` + ``loader/standard_loader.py``: q, k, v are
concatenated along N into one linear (``qkv_proj``), gate and up into ``mlp.gate_up_proj``
(gate first), and ``lm_head`` exists only when the embedding is not tied. Qwen2
(:mod:`lowbit.architectures.qwen2`) reuses the parameter map and the layout.
"""

from __future__ import annotations

from lowbit.architectures.base import Architecture, BlockLayout, MlcParam, NormGroup
from lowbit.errors import LowbitError

MAX_BATCH_SIZE = 128  # MLC's default model_config max_batch_size

LAYOUT = BlockLayout(
    layers="model.layers",
    attention="self_attn",
    norm_groups=(
        NormGroup("qkv", "input_layernorm",
                  ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
        NormGroup("fc1", "post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    ),
    v_o=("self_attn.v_proj", "self_attn.o_proj"),
    up_down=("mlp.up_proj", "mlp.down_proj"),
    clip_skipped=("self_attn.q_proj", "self_attn.k_proj"),
)


def head_dim(config: dict) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def rope_theta(config: dict) -> float:
    """transformers ≥ 5 keeps it in ``rope_parameters``; older configs at the top level."""
    rope = config.get("rope_parameters") or {}
    return rope.get("rope_theta", config.get("rope_theta", 10000.0))


def context_window(config: dict) -> int:
    return config.get("max_position_embeddings") or config.get("max_sequence_length") or 2048


def decoder_params(config: dict, qkv_name: str, qkv_bias: bool) -> list[MlcParam]:
    """Every MLC parameter of a Llama-style decoder in MLC's order (embedding, layers, norm,
    lm_head), q/k/v fused as ``qkv_name`` (with its concatenated biases when ``qkv_bias``)."""
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    q_dim = config["num_attention_heads"] * head_dim(config)
    kv_dim = (config.get("num_key_value_heads") or config["num_attention_heads"]) * head_dim(config)
    qkv_rows = (q_dim, kv_dim, kv_dim)
    params = [MlcParam("model.embed_tokens", "embedding", ("model.embed_tokens",), (vocab,), hidden)]
    for i in range(config["num_hidden_layers"]):
        attn, mlp = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        qkv = tuple(f"{attn}.{p}" for p in ("q_proj", "k_proj", "v_proj"))
        params.append(MlcParam(f"{attn}.{qkv_name}", "linear", qkv, qkv_rows, hidden))
        if qkv_bias:
            bias = tuple(f"{s}.bias" for s in qkv)
            params.append(MlcParam(f"{attn}.{qkv_name}.bias", "plain", bias, qkv_rows))
        gate_up = (f"{mlp}.gate_proj", f"{mlp}.up_proj")
        params += [
            MlcParam(f"{attn}.o_proj", "linear", (f"{attn}.o_proj",), (hidden,), q_dim),
            MlcParam(f"{mlp}.gate_up_proj", "linear", gate_up, (inter, inter), hidden),
            MlcParam(f"{mlp}.down_proj", "linear", (f"{mlp}.down_proj",), (hidden,), inter),
        ]
        for norm in ("input_layernorm", "post_attention_layernorm"):
            name = f"model.layers.{i}.{norm}.weight"
            params.append(MlcParam(name, "plain", (name,), (hidden,)))
    params.append(MlcParam("model.norm.weight", "plain", ("model.norm.weight",), (hidden,)))
    if not config.get("tie_word_embeddings", False):
        params.append(MlcParam("lm_head", "linear", ("lm_head",), (vocab,), hidden))
    return params


def hf_config_common(model_type: str, mc: dict, theta: float) -> dict:
    """The HF ``config.json`` fields a Llama-style ``model_config`` shares across families."""
    return {
        "model_type": model_type,
        "hidden_size": mc["hidden_size"],
        "intermediate_size": mc["intermediate_size"],
        "num_attention_heads": mc["num_attention_heads"],
        "num_hidden_layers": mc["num_hidden_layers"],
        "num_key_value_heads": mc["num_key_value_heads"],
        "head_dim": mc["head_dim"],
        "rms_norm_eps": mc["rms_norm_eps"],
        "vocab_size": mc["vocab_size"],
        "tie_word_embeddings": mc["tie_word_embeddings"],
        "max_position_embeddings": mc["context_window_size"],
        "rope_theta": theta,
    }


def mlc_params(config: dict) -> list[MlcParam]:
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise LowbitError("MLC's llama model has no attention/MLP biases; this model has them")
    return decoder_params(config, "qkv_proj", qkv_bias=False)


def mlc_model_config(config: dict) -> dict:
    """``model_config`` as MLC's ``LlamaConfig.asdict()`` writes it."""
    ctx = context_window(config)
    rope = config.get("rope_parameters") or config.get("rope_scaling")
    rope_scaling = rope if rope and rope.get("rope_type", "default") != "default" else None
    return {
        "hidden_size": config["hidden_size"],
        "intermediate_size": config["intermediate_size"],
        "num_attention_heads": config["num_attention_heads"],
        "num_hidden_layers": config["num_hidden_layers"],
        "rms_norm_eps": config["rms_norm_eps"],
        "vocab_size": config["vocab_size"],
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
        "position_embedding_base": rope_theta(config),
        "rope_scaling": rope_scaling,
        "context_window_size": ctx,
        "prefill_chunk_size": min(ctx, 8192),
        "num_key_value_heads": config.get("num_key_value_heads") or config["num_attention_heads"],
        "head_dim": head_dim(config),
        "tensor_parallel_shards": 1,
        "pipeline_parallel_stages": 1,
        "max_batch_size": MAX_BATCH_SIZE,
        "disaggregation": False,
    }


def hf_config_from_mlc(mc: dict) -> dict:
    cfg = hf_config_common("llama", mc, mc["position_embedding_base"])
    if mc.get("rope_scaling"):
        cfg["rope_scaling"] = mc["rope_scaling"]
    return cfg


ARCHITECTURE = Architecture(
    model_type="llama",
    layout=LAYOUT,
    mlc_params=mlc_params,
    mlc_model_config=mlc_model_config,
    hf_config_from_mlc=hf_config_from_mlc,
    model="lowbit.compiler.models.llama:LlamaForCausalLM",
    description="Llama 1/2/3 (Llama-3 RoPE scaling), SmolLM",
)
