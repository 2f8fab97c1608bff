"""Phi-3 / Phi-3.5 in ``tvm.relax.frontend.nn``, with MLC-LLM's phi3 parameter names
(``transformer.embd``, ``transformer.h.{i}.ln`` / ``mixer.qkv_proj`` / ``mixer.out_proj`` /
``mlp.gate_up_proj`` / ``mlp.down_proj`` / ``post_attention_layernorm``, ``transformer.norm``,
``lm_head``) over :mod:`lowbit.compiler.models.llama`'s linears, norms and exports.

RoPE (plain, or longrope with ``partial_rotary_factor``) is applied here, before q/k enter the
paged KV cache (whose own RoPE is off), as transformers' Phi-3 computes it: the inverse
frequencies ``1 / (factor_j · θ^(2j/d))`` take longrope's short factors while the sequence is at
most ``original_max_position_embeddings`` long and its long factors beyond, and cos/sin are
multiplied by ``sqrt(1 + ln(max / original) / ln(original))``. "The sequence" is what this
forward reaches, as transformers' ``max(position_ids) + 1``: a decode token's own position + 1
(each sequence of a batch on its own), a prefill's last position + 1 (the longest sequence of a
batched prefill). Keys already in the cache keep the set they were rotated with, as in
transformers' KV-cache generation: a sequence that grows past the original length by decoding
has short-factor keys for its first positions and long-factor ones after, whereas one forward
over the whole sequence would rotate every key with the long factors. MLC's kernel instead
picks the set by the number of tokens in the forward call (decode steps always short).

A ``sliding_window`` shorter than the context (Phi-3-mini-4k's 2047) windows every layer, as
transformers does (MLC's phi3 ignores it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode
from tvm.target import Target

from lowbit.architectures.phi3 import longrope, partial_rotary_factor, rope_parameters
from lowbit.compiler.models.llama import (
    MLP,
    LlamaConfig,
    LlamaForCausalLM,
    QuantEmbedding,
    QuantLinear,
    RMSNorm,
    fused_qkv_attention,
)
from lowbit.compiler.schemes import Scheme
from lowbit.errors import LowbitError


@dataclass
class Phi3Config(LlamaConfig):
    """Llama's shapes plus RoPE's rotated dimensions and longrope's factors (both 1 for plain
    RoPE) and cos/sin scale."""

    rotary_dim: int = 0
    original_max_position_embeddings: int = 0
    short_factor: tuple[float, ...] = ()
    long_factor: tuple[float, ...] = ()
    attention_factor: float = 1.0

    @classmethod
    def from_dict(cls, cfg: dict, qkv_name: str = "qkv_proj", qkv_bias: bool = False) -> Phi3Config:
        """From an MLC phi3 ``model_config`` (or an HF config with the same field names)."""
        theta = cfg.get("position_embedding_base") or rope_parameters(cfg).get("rope_theta") \
            or cfg.get("rope_theta")
        plain = {k: v for k, v in cfg.items() if k not in ("rope_scaling", "rope_parameters")}
        base = LlamaConfig.from_dict({**plain, "rope_theta": theta}, qkv_name, qkv_bias)
        rotary_dim = int(base.head_dim * partial_rotary_factor(cfg))
        scaling = longrope(cfg)
        if scaling is None:
            ones = (1.0,) * (rotary_dim // 2)
            return cls(**asdict(base), rotary_dim=rotary_dim, short_factor=ones, long_factor=ones)
        original = scaling["original_max_position_embeddings"]
        factor = scaling.get("factor") or scaling["max_position_embeddings"] / original
        attention_factor = scaling.get("attention_factor") or (
            1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original)))
        for key in ("short_factor", "long_factor"):
            if len(scaling[key]) != rotary_dim // 2:
                raise LowbitError(f"longrope {key} has {len(scaling[key])} entries, expected {rotary_dim // 2}")
        return cls(**asdict(base), rotary_dim=rotary_dim, original_max_position_embeddings=original,
                   short_factor=tuple(scaling["short_factor"]), long_factor=tuple(scaling["long_factor"]),
                   attention_factor=float(attention_factor))

    def inv_freq(self) -> np.ndarray:
        """[2, rotary_dim / 2] fp32: the short factors' inverse frequencies, then the long ones'
        (computed as transformers computes them, in fp32)."""
        exponent = np.arange(0, self.rotary_dim, 2).astype(np.float32) / np.float32(self.rotary_dim)
        powers = np.float32(self.rope_theta) ** exponent
        factors = np.array([self.short_factor, self.long_factor], dtype=np.float32)
        return (np.float32(1.0) / (factors * powers)).astype(np.float32)


def rotary_te(cfg: Phi3Config):
    """TE: q and k heads of ``qkv`` [b, s, heads, d] rotated at ``pos`` [b·s], with the long
    factors where ``last`` [b·s] (the last position the token's sequence reaches) is at or past
    the original length; v heads and the dimensions past ``rotary_dim`` unchanged."""
    qk_heads = cfg.num_attention_heads + cfg.num_key_value_heads
    rot, half, scale = cfg.rotary_dim, cfg.rotary_dim // 2, cfg.attention_factor
    original = cfg.original_max_position_embeddings

    def compute(qkv: te.Tensor, pos: te.Tensor, last: te.Tensor, inv_freq: te.Tensor) -> te.Tensor:
        _, s, _, _ = qkv.shape

        def value(i, j, h, e):
            t = i * s + j
            long = tirx.Select(last[t] >= original, 1, 0) if original else 0
            freq = pos[t].astype("float32") * inv_freq[long, e % half]
            other = tirx.if_then_else(e < half, -qkv[i, j, h, e + half], qkv[i, j, h, e - half])
            cos, sin = tirx.cos(freq) * scale, tirx.sin(freq) * scale
            rotated = qkv[i, j, h, e].astype("float32") * cos + other.astype("float32") * sin
            return tirx.if_then_else(tirx.all(h < qk_heads, e < rot), rotated.astype(qkv.dtype), qkv[i, j, h, e])

        return te.compute(qkv.shape, value, name="rotary")

    return compute


class Phi3Attention(nn.Module):
    def __init__(self, cfg: Phi3Config, scheme: Scheme):
        self.cfg = cfg
        heads = cfg.num_attention_heads + 2 * cfg.num_key_value_heads
        self.qkv_proj = QuantLinear(cfg.hidden_size, heads * cfg.head_dim, scheme)
        self.out_proj = QuantLinear(cfg.num_attention_heads * cfg.head_dim, cfg.hidden_size, scheme)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor, Tensor], kv: PagedKVCache, layer_id: int) -> Tensor:
        c = self.cfg
        b, s, _ = x.shape
        qkv = op.reshape(self.qkv_proj(x), (b, s, c.num_attention_heads + 2 * c.num_key_value_heads, c.head_dim))
        qkv = op.tensor_expr_op(rotary_te(c), "rotary", [qkv, *rope])
        out = fused_qkv_attention(kv, layer_id, qkv, c, c.head_dim**-0.5)
        return self.out_proj(op.reshape(out, (b, s, c.num_attention_heads * c.head_dim)))


class Phi3Block(nn.Module):
    def __init__(self, cfg: Phi3Config, scheme: Scheme):
        self.ln = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, scheme.model_dtype)
        self.mixer = Phi3Attention(cfg, scheme)
        self.mlp = MLP(cfg, scheme)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, scheme.model_dtype)

    def forward(self, h: Tensor, rope: tuple[Tensor, Tensor, Tensor], kv: PagedKVCache, layer_id: int) -> Tensor:
        h, x = self.post_attention_layernorm.after_add(h, self.mixer(self.ln(h), rope, kv, layer_id))
        return h + self.mlp(x)


class Phi3Model(nn.Module):
    def __init__(self, cfg: Phi3Config, scheme: Scheme, dtype: str):
        self.cfg = cfg
        self.embd = QuantEmbedding(cfg.vocab_size, cfg.hidden_size, scheme.edge, dtype)
        self.h = nn.ModuleList([Phi3Block(cfg, scheme) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, scheme.model_dtype)

    @property
    def embed_tokens(self) -> QuantEmbedding:
        """Llama's name for the embedding, which :class:`LlamaForCausalLM`'s exports use."""
        return self.embd

    def forward(self, h: Tensor, kv: PagedKVCache) -> Tensor:
        b, s, _ = h.shape
        pos = kv.get_query_positions(b * s)
        # decode: each token is its sequence's last; prefill: the chunk's last position
        last = pos if isinstance(s, int) and s == 1 else op.broadcast_to(op.max(pos, keepdims=True), pos.shape)
        rope = (pos, last, Tensor.from_const(self.cfg.inv_freq()))
        for i, block in enumerate(self.h):
            h = block(h, rope, kv, i)
        return self.norm(h)


class Phi3ForCausalLM(LlamaForCausalLM):
    """Llama's exports over the Phi-3 decoder stack (``transformer``)."""

    config_class = Phi3Config
    rope_mode = RopeMode.NONE

    def __init__(self, cfg: Phi3Config, scheme: Scheme, target: Target, dtype: str = "float32"):
        self.cfg, self.scheme, self.target, self.dtype = cfg, scheme, target, dtype
        self.transformer = Phi3Model(cfg, scheme, dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = QuantLinear(cfg.hidden_size, cfg.vocab_size, scheme.edge)

    @property
    def model(self) -> Phi3Model:
        """Llama's name for the decoder stack, which its exports use."""
        return self.transformer
