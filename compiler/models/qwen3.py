"""Qwen3 in ``tvm.relax.frontend.nn``: the Llama definition (:mod:`lowbit.compiler.models.llama`)
with a per-head RMSNorm on q and on k, as MLC-LLM's qwen3 model exports it.

The fused ``c_attn`` projection is split per head into q, k, v; ``self_attn.q_norm`` /
``self_attn.k_norm`` ([head_dim], stored in the model dtype) normalize each q and k head, and the
three are concatenated back for the KV cache's fused-qkv attention, which applies RoPE after
(HF's order: projection → norm → RoPE).
"""

from __future__ import annotations

from tvm.relax.frontend.nn import Tensor, op

from lowbit.compiler.models.llama import (
    Attention,
    DecoderLayer,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
    RMSNorm,
)
from lowbit.compiler.schemes import Scheme


class Qwen3Attention(Attention):
    def __init__(self, cfg: LlamaConfig, scheme: Scheme):
        super().__init__(cfg, scheme)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, scheme.model_dtype)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, scheme.model_dtype)

    def qkv(self, x: Tensor) -> Tensor:
        h_q, h_kv = self.cfg.num_attention_heads, self.cfg.num_key_value_heads
        q, k, v = op.split(super().qkv(x), [h_q, h_q + h_kv], axis=2)
        return op.concat([self.q_norm(q), self.k_norm(k), v], dim=2)


class Qwen3DecoderLayer(DecoderLayer):
    attention_class = Qwen3Attention


class Qwen3Model(LlamaModel):
    layer_class = Qwen3DecoderLayer


class Qwen3ForCausalLM(LlamaForCausalLM):
    """Llama's exports over the Qwen3 decoder stack."""

    body_class = Qwen3Model
