"""HF Llama / Qwen2 names → MLC-LLM's parameter names, fusions and ``model_config``.

As mlc-llm's ``model/llama/llama_model.py`` + ``loader/standard_loader.py`` (and
``model/qwen2/``): q, k, v are concatenated along N into one linear (``qkv_proj`` in Llama,
``c_attn`` with a bias in Qwen2), gate and up into ``mlp.gate_up_proj`` (gate first), and
``lm_head`` exists only when the embedding is not tied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lowbit.errors import LowbitError

ParamKind = Literal["linear", "embedding", "plain"]


@dataclass(frozen=True)
class Family:
    qkv_name: str
    qkv_bias: bool


FAMILIES = {
    "llama": Family(qkv_name="qkv_proj", qkv_bias=False),
    "qwen2": Family(qkv_name="c_attn", qkv_bias=True),
}


@dataclass(frozen=True)
class MlcParam:
    """One MLC parameter (before quantization) and the HF tensors it is built from.

    ``linear``/``embedding``: ``name`` is the module (``….qkv_proj``), ``sources`` the HF modules
    whose ``.weight`` [rows_i, k] are stacked along N; ``plain``: ``name`` is the full tensor name
    and ``sources`` the HF tensors [rows_i] concatenated along dim 0.
    """

    name: str
    kind: ParamKind
    sources: tuple[str, ...]
    rows: tuple[int, ...]
    k: int = 0


def family(config: dict) -> Family:
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise LowbitError(
            f"convert supports model types {', '.join(FAMILIES)}; got {model_type!r}"
        )
    if model_type == "llama" and (config.get("attention_bias") or config.get("mlp_bias")):
        raise LowbitError("MLC's llama model has no attention/MLP biases; this model has them")
    return FAMILIES[model_type]


def head_dim(config: dict) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def mlc_params(config: dict) -> list[MlcParam]:
    """Every MLC parameter of an HF config, in MLC's order (embedding, layers, norm, lm_head)."""
    fam = family(config)
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    q_dim = config["num_attention_heads"] * head_dim(config)
    kv_dim = (config.get("num_key_value_heads") or config["num_attention_heads"]) * head_dim(config)
    qkv_rows = (q_dim, kv_dim, kv_dim)
    params = [MlcParam("model.embed_tokens", "embedding", ("model.embed_tokens",), (vocab,), hidden)]
    for i in range(config["num_hidden_layers"]):
        attn, mlp = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        qkv = tuple(f"{attn}.{p}" for p in ("q_proj", "k_proj", "v_proj"))
        params.append(MlcParam(f"{attn}.{fam.qkv_name}", "linear", qkv, qkv_rows, hidden))
        if fam.qkv_bias:
            bias = tuple(f"{s}.bias" for s in qkv)
            params.append(MlcParam(f"{attn}.{fam.qkv_name}.bias", "plain", bias, qkv_rows))
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


def rope_theta(config: dict) -> float:
    """transformers ≥ 5 keeps it in ``rope_parameters``; older configs at the top level."""
    rope = config.get("rope_parameters") or {}
    return rope.get("rope_theta", config.get("rope_theta", 10000.0))


def context_window(config: dict) -> int:
    return config.get("max_position_embeddings") or config.get("max_sequence_length") or 2048


def mlc_model_config(config: dict, max_batch_size: int = 128) -> dict:
    """``model_config`` as MLC's ``LlamaConfig`` / ``QWen2Config.asdict()`` writes it."""
    fam = family(config)
    ctx = context_window(config)
    prefill = min(ctx, 8192)
    common = {
        "hidden_size": config["hidden_size"],
        "intermediate_size": config["intermediate_size"],
        "num_attention_heads": config["num_attention_heads"],
        "num_hidden_layers": config["num_hidden_layers"],
    }
    kv_heads = config.get("num_key_value_heads") or config["num_attention_heads"]
    if fam is FAMILIES["qwen2"]:
        return {
            "hidden_act": config.get("hidden_act", "silu"),
            **common,
            "num_key_value_heads": kv_heads,
            "rms_norm_eps": config["rms_norm_eps"],
            "rope_theta": rope_theta(config),
            "vocab_size": config["vocab_size"],
            "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
            "context_window_size": ctx,
            "prefill_chunk_size": prefill,
            "tensor_parallel_shards": 1,
            "head_dim": head_dim(config),
            "dtype": "float32",
            "max_batch_size": max_batch_size,
        }
    rope = config.get("rope_parameters") or config.get("rope_scaling")
    rope_scaling = rope if rope and rope.get("rope_type", "default") != "default" else None
    return {
        **common,
        "rms_norm_eps": config["rms_norm_eps"],
        "vocab_size": config["vocab_size"],
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
        "position_embedding_base": rope_theta(config),
        "rope_scaling": rope_scaling,
        "context_window_size": ctx,
        "prefill_chunk_size": prefill,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim(config),
        "tensor_parallel_shards": 1,
        "pipeline_parallel_stages": 1,
        "max_batch_size": max_batch_size,
        "disaggregation": False,
    }


def hf_config_from_mlc(model_type: str, mc: dict) -> dict:
    """The HF ``config.json`` fields needed to rebuild the PyTorch model from ``model_config``."""
    theta = mc["rope_theta"] if model_type == "qwen2" else mc["position_embedding_base"]
    cfg = {
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
    if model_type == "llama" and mc.get("rope_scaling"):
        cfg["rope_scaling"] = mc["rope_scaling"]
    family(cfg)
    return cfg
