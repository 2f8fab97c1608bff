"""Phi-3 / Phi-3.5 (and Phi-4-mini, also ``phi3``): a Llama-style decoder whose HF checkpoint
already fuses q/k/v (``self_attn.qkv_proj``, q rows then k then v) and gate/up
(``mlp.gate_up_proj``, gate rows then up), with plain or longrope RoPE.

As mlc-llm's ``model/phi3/``: the fused linears keep their rows, under MLC's names
(``transformer.embd``, ``transformer.h.{i}.ln``, ``….mixer.qkv_proj``, ``….mixer.out_proj``,
``….mlp.gate_up_proj``, ``….mlp.down_proj``, ``….post_attention_layernorm``,
``transformer.norm``, ``lm_head``). Calibration works on the HF modules: one linear reads each
norm, and the exact LET pairs are v → o (v = ``qkv_proj``'s last rows) and up → down
(up = ``gate_up_proj``'s last rows).
"""

from __future__ import annotations

from lowbit.architectures.base import Architecture, BlockLayout, MlcParam, NormGroup
from lowbit.architectures.llama import MAX_BATCH_SIZE, context_window, head_dim, rope_theta
from lowbit.errors import LowbitError

LAYOUT = BlockLayout(
    layers="model.layers",
    attention="self_attn",
    norm_groups=(
        NormGroup("qkv", "input_layernorm", ("self_attn.qkv_proj",)),
        NormGroup("fc1", "post_attention_layernorm", ("mlp.gate_up_proj",)),
    ),
    v_o=("self_attn.qkv_proj", "self_attn.o_proj"),
    up_down=("mlp.gate_up_proj", "mlp.down_proj"),
    clip_skipped=("self_attn.qkv_proj",),  # q and k are in it; llm-awq skips fused qkv too
)

# mlc-llm's conversation_template/phi.py ("phi-3"), for folders without a chat template
CONV_TEMPLATE = {
    "name": "phi-3",
    "system_template": "<|system|>\n{system_message}",
    "system_message": "You are a helpful digital assistant. Please provide safe, ethical and "
    "accurate information to the user.",
    "roles": {"user": "<|user|>", "assistant": "<|assistant|>"},
    "seps": ["<|end|>\n"],
    "role_content_sep": "\n",
    "role_empty_sep": "\n",
    "system_prefix_token_ids": [1],
    "stop_str": ["<|endoftext|>"],
    "stop_token_ids": [32000, 32001, 32007],  # <|endoftext|>, <|assistant|>, <|end|>
}


def rope_parameters(config: dict) -> dict:
    """The RoPE fields of a config (transformers ≥ 5's ``rope_parameters``, updated by an older
    config's or an MLC ``model_config``'s ``rope_scaling``), longrope's old name ``su`` normalised."""
    rope = dict(config.get("rope_parameters") or {})
    rope.update(config.get("rope_scaling") or {})
    kind = rope.get("rope_type") or rope.get("type") or "default"
    return {**rope, "rope_type": "longrope" if kind == "su" else kind}


def longrope(config: dict) -> dict | None:
    """``model_config.rope_scaling`` as MLC's ``Phi3Config`` writes it, or None for plain RoPE."""
    rope = rope_parameters(config)
    if rope["rope_type"] == "default":
        return None
    if rope["rope_type"] != "longrope":
        raise LowbitError(f"unsupported RoPE scaling {rope['rope_type']!r} for phi3 (supported: longrope)")
    original = config.get("original_max_position_embeddings") or rope.get("original_max_position_embeddings")
    if not original:
        raise LowbitError("longrope RoPE scaling needs original_max_position_embeddings")
    extra = {k: rope[k] for k in ("factor", "attention_factor") if rope.get(k) is not None}
    return {
        "type": "longrope",
        "rope_type": "longrope",
        "short_factor": list(rope["short_factor"]),
        "long_factor": list(rope["long_factor"]),
        "max_position_embeddings": context_window(config),
        "original_max_position_embeddings": int(original),
        **extra,
    }


def partial_rotary_factor(config: dict) -> float:
    rope = config.get("rope_parameters") or {}
    return float(config.get("partial_rotary_factor") or rope.get("partial_rotary_factor") or 1.0)


def mlc_params(config: dict) -> list[MlcParam]:
    """MLC's parameters in its order (embedding; per layer ln, qkv, out, gate_up, down,
    post-attention norm; norm; lm_head when untied); each fused HF linear is one source."""
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    q_dim = config["num_attention_heads"] * head_dim(config)
    kv_dim = (config.get("num_key_value_heads") or config["num_attention_heads"]) * head_dim(config)
    params = [MlcParam("transformer.embd", "embedding", ("model.embed_tokens",), (vocab,), hidden)]
    for i in range(config["num_hidden_layers"]):
        hf, mlc = f"model.layers.{i}", f"transformer.h.{i}"
        params += [
            MlcParam(f"{mlc}.ln.weight", "plain", (f"{hf}.input_layernorm.weight",), (hidden,)),
            MlcParam(f"{mlc}.mixer.qkv_proj", "linear", (f"{hf}.self_attn.qkv_proj",),
                     (q_dim + 2 * kv_dim,), hidden),
            MlcParam(f"{mlc}.mixer.out_proj", "linear", (f"{hf}.self_attn.o_proj",), (hidden,), q_dim),
            MlcParam(f"{mlc}.mlp.gate_up_proj", "linear", (f"{hf}.mlp.gate_up_proj",), (2 * inter,), hidden),
            MlcParam(f"{mlc}.mlp.down_proj", "linear", (f"{hf}.mlp.down_proj",), (hidden,), inter),
            MlcParam(f"{mlc}.post_attention_layernorm.weight", "plain",
                     (f"{hf}.post_attention_layernorm.weight",), (hidden,)),
        ]
    params.append(MlcParam("transformer.norm.weight", "plain", ("model.norm.weight",), (hidden,)))
    if not config.get("tie_word_embeddings", False):
        params.append(MlcParam("lm_head", "linear", ("lm_head",), (vocab,), hidden))
    return params


def mlc_model_config(config: dict) -> dict:
    """``model_config`` as MLC's ``Phi3Config.asdict()`` writes it."""
    if head_dim(config) * config["num_attention_heads"] != config["hidden_size"]:
        raise LowbitError("phi3 needs head_dim × num_attention_heads = hidden_size")
    ctx = context_window(config)
    window = config.get("sliding_window") or -1
    scaling = longrope(config)
    return {
        "model_type": "phi3",
        "hidden_size": config["hidden_size"],
        "vocab_size": config["vocab_size"],
        "num_hidden_layers": config["num_hidden_layers"],
        "num_attention_heads": config["num_attention_heads"],
        "intermediate_size": config["intermediate_size"],
        "rms_norm_eps": config["rms_norm_eps"],
        "num_key_value_heads": config.get("num_key_value_heads") or config["num_attention_heads"],
        "max_position_embeddings": ctx,
        "position_embedding_base": rope_theta(config),
        "rope_scaling": scaling,
        "original_max_position_embeddings": scaling["original_max_position_embeddings"] if scaling else 0,
        "context_window_size": ctx,
        "prefill_chunk_size": min(ctx, 8192),
        "head_dim": head_dim(config),
        "tensor_parallel_shards": 1,
        "max_batch_size": MAX_BATCH_SIZE,
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
        "partial_rotary_factor": partial_rotary_factor(config),
        # Phi-3-mini-4k's 2047 of 4096, applied as transformers applies it (MLC ignores it)
        "sliding_window_size": window if 0 < window < ctx else -1,
    }


def hf_config_from_mlc(mc: dict) -> dict:
    cfg = {
        "model_type": "phi3",
        "hidden_size": mc["hidden_size"],
        "intermediate_size": mc["intermediate_size"],
        "num_attention_heads": mc["num_attention_heads"],
        "num_hidden_layers": mc["num_hidden_layers"],
        "num_key_value_heads": mc["num_key_value_heads"],
        "rms_norm_eps": mc["rms_norm_eps"],
        "vocab_size": mc["vocab_size"],
        "tie_word_embeddings": mc["tie_word_embeddings"],
        "max_position_embeddings": mc["max_position_embeddings"],
        "rope_theta": mc["position_embedding_base"],
        "partial_rotary_factor": mc["partial_rotary_factor"],
        "sliding_window": mc["sliding_window_size"] if mc.get("sliding_window_size", -1) > 0 else None,
        # transformers' defaults (32000) may lie outside the vocabulary; the chat config has the ids
        "pad_token_id": None,
        "eos_token_id": None,
    }
    scaling = mc.get("rope_scaling")
    if scaling:
        cfg["original_max_position_embeddings"] = scaling["original_max_position_embeddings"]
        keep = ("short_factor", "long_factor", "factor", "attention_factor")
        cfg["rope_scaling"] = {"rope_type": "longrope", **{k: scaling[k] for k in keep if k in scaling}}
    return cfg


ARCHITECTURE = Architecture(
    model_type="phi3",
    layout=LAYOUT,
    mlc_params=mlc_params,
    mlc_model_config=mlc_model_config,
    hf_config_from_mlc=hf_config_from_mlc,
    model="lowbit.compiler.models.phi3:Phi3ForCausalLM",
    conv_template=CONV_TEMPLATE,
    description="Phi-3 / Phi-3.5 / Phi-4-mini: fused qkv and gate_up, longrope, sliding window",
)
