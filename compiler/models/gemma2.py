"""Gemma 2 in ``tvm.relax.frontend.nn``, with MLC-LLM's gemma2 parameter names, over
:mod:`lowbit.compiler.models.llama`'s linears and exports.

What differs from Llama, each as transformers' ``Gemma2ForCausalLM`` computes it:

* the embedding is scaled by ``sqrt(hidden_size)`` (in the compute dtype);
* RMSNorm multiplies by ``1 + w``: the converter stores ``1 + w`` (as MLC does), so the norms here
  are plain RMSNorms;
* four norms per layer: ``input_layernorm`` → attention → ``post_attention_layernorm`` →
  residual; ``pre_feedforward_layernorm`` → MLP → ``post_feedforward_layernorm`` → residual;
* the MLP is ``down(gelu_tanh(gate) · up)``;
* attention scores are scaled by ``query_pre_attn_scalar^-1/2`` and soft-capped,
  ``cap · tanh(s / cap)``, inside the KV cache's kernels (:mod:`..kernels.attention_softcap`);
* layers alternate sliding-window (even) and full attention (``layer_types``), each a layer kind
  of the paged KV cache, which keeps every key, so the context is not capped at the window
  (MLC ignores the soft-capping and caps the context at the window);
* the final logits are soft-capped, ``cap · tanh(logits / cap)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache

from lowbit.compiler.models.llama import (
    MLP,
    Attention,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
    RMSNorm,
)
from lowbit.compiler.schemes import Scheme
from lowbit.errors import LowbitError

GELU_APPROXIMATION = {"gelu_pytorch_tanh": "tanh", "gelu_tanh": "tanh", "gelu": None}


@dataclass
class Gemma2Config(LlamaConfig):
    """Llama's shapes plus Gemma 2's attention scale, soft-caps (0: none), activation and the
    attention kind of each layer (``sliding_attention`` / ``full_attention``)."""

    query_pre_attn_scalar: float = 0.0
    attn_logit_softcapping: float = 0.0
    final_logit_softcapping: float = 0.0
    hidden_activation: str = "gelu_pytorch_tanh"
    layer_types: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, cfg: dict, qkv_name: str = "qkv_proj", qkv_bias: bool = False) -> Gemma2Config:
        """From an MLC gemma2 ``model_config`` (the window is MLC's ``sliding_window``)."""
        base = LlamaConfig.from_dict({**cfg, "sliding_window_size": cfg.get("sliding_window") or -1},
                                     qkv_name, qkv_bias)
        layer_types = tuple(cfg["layer_types"])
        if len(layer_types) != base.num_hidden_layers or \
                not set(layer_types) <= {"sliding_attention", "full_attention"}:
            raise LowbitError(f"gemma2 layer_types must give sliding_attention or full_attention "
                              f"for each of the {base.num_hidden_layers} layers, got {list(layer_types)}")
        if cfg["hidden_activation"] not in GELU_APPROXIMATION:
            raise LowbitError(f"unsupported gemma2 hidden_activation {cfg['hidden_activation']!r} "
                              f"(supported: {', '.join(GELU_APPROXIMATION)})")
        return cls(**asdict(base), query_pre_attn_scalar=float(cfg["query_pre_attn_scalar"]),
                   attn_logit_softcapping=float(cfg.get("attn_logit_softcapping") or 0.0),
                   final_logit_softcapping=float(cfg.get("final_logit_softcapping") or 0.0),
                   hidden_activation=cfg["hidden_activation"], layer_types=layer_types)


class Gemma2Attention(Attention):
    def __init__(self, cfg: Gemma2Config, scheme: Scheme):
        super().__init__(cfg, scheme)
        self.sm_scale = cfg.query_pre_attn_scalar**-0.5


class Gemma2MLP(MLP):
    def __init__(self, cfg: Gemma2Config, scheme: Scheme):
        super().__init__(cfg, scheme)
        self.approximate = GELU_APPROXIMATION[cfg.hidden_activation]

    def forward(self, x: Tensor) -> Tensor:
        gate, up = op.split(self.gate_up_proj(x), 2, axis=-1)
        return self.down_proj(op.gelu(gate, approximate=self.approximate) * up)


class Gemma2DecoderLayer(nn.Module):
    def __init__(self, cfg: Gemma2Config, scheme: Scheme):
        norm = lambda: RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, scheme.model_dtype)  # noqa: E731
        self.self_attn = Gemma2Attention(cfg, scheme)
        self.mlp = Gemma2MLP(cfg, scheme)
        self.input_layernorm, self.post_attention_layernorm = norm(), norm()
        self.pre_feedforward_layernorm, self.post_feedforward_layernorm = norm(), norm()

    def forward(self, h: Tensor, kv: PagedKVCache, layer_id: int) -> Tensor:
        attn = self.post_attention_layernorm(self.self_attn(self.input_layernorm(h), kv, layer_id))
        h, x = self.pre_feedforward_layernorm.after_add(h, attn)
        return h + self.post_feedforward_layernorm(self.mlp(x))


class Gemma2Model(LlamaModel):
    layer_class = Gemma2DecoderLayer

    def __init__(self, cfg: Gemma2Config, scheme: Scheme, dtype: str):
        super().__init__(cfg, scheme, dtype)
        self.embed_scale = cfg.hidden_size**0.5

    def forward(self, h: Tensor, kv: PagedKVCache) -> Tensor:
        return super().forward(h * self.embed_scale, kv)


class Gemma2ForCausalLM(LlamaForCausalLM):
    """Llama's exports over the Gemma 2 decoder stack, with soft-capped logits and attention."""

    config_class = Gemma2Config
    body_class = Gemma2Model

    def get_logits(self, h: Tensor) -> Tensor:
        logits, cap = super().get_logits(h), self.cfg.final_logit_softcapping
        return op.tanh(logits / cap) * cap if cap else logits

    def attention_kinds(self) -> list[str]:
        windowed = self.cfg.sliding_window_size > 0
        return ["mha_sliding" if windowed and t == "sliding_attention" else "mha" for t in self.cfg.layer_types]

    def attention_softcap(self) -> float:
        return self.cfg.attn_logit_softcapping
