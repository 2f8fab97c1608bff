"""The Llama family (Llama 1–3 incl. Llama-3 RoPE scaling, SmolLM, Mistral-style GQA) and Qwen2
(q/k/v biases) in ``tvm.relax.frontend.nn``, exported as MLC-LLM's llama model exports it.

Parameters carry the converter's (= MLC's) names and storage dtypes: ``model.embed_tokens``,
``model.layers.{i}.self_attn.qkv_proj`` (q, k, v rows; the architecture record names it, e.g.
Qwen2's ``c_attn``), ``o_proj``, ``mlp.gate_up_proj`` (gate
rows, then up rows), ``down_proj``, the norms, ``lm_head`` when untied; a quantized linear holds
``q_weight``/``q_scale`` (``q_zero`` when asymmetric; NF3's ``q_scale`` is [N, G, 2]) instead of
``weight``. Activations, the KV cache and every accumulation are in the target's compute dtype
(fp32 on CPU: x86 has no fast fp16 math; fp16 on GPUs); stored parameters are cast inside the
kernels that read them, and logits always come out in fp32.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from tvm import IRModule, te, tirx
from tvm import relax as rx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode, TIRPagedKVCache
from tvm.target import Target

from lowbit.compiler.kernels.attention_cpu import use_lowbit_attention
from lowbit.compiler.kernels.attention_softcap import softcap_attention
from lowbit.compiler.kernels.gated_cpu import gated_silu
from lowbit.compiler.kernels.gemm_int8 import batch_decode_int8, gemm_int8, int8_prefill_applies
from lowbit.compiler.kernels.gemm_int8 import supports as gemm_supports
from lowbit.compiler.kernels.gemv_int8 import decode_terms, gemv_int8, int8_decode_applies
from lowbit.compiler.kernels.norm_cpu import add_rms_norm, rms_norm
from lowbit.compiler.kernels.quant_matmul import q_embed_te, q_matmul_te, zero_points_as_words
from lowbit.compiler.kernels.rope_cpu import use_lowbit_split_rotary
from lowbit.compiler.schemes import AsymGroupQuant, NoQuant, Scheme
from lowbit.errors import LowbitError

logger = logging.getLogger(__name__)


@dataclass
class LlamaConfig:
    """Shapes and hyper-parameters of a Llama-family model (HF or MLC ``model_config`` names)."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_hidden_layers: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    context_window_size: int
    prefill_chunk_size: int
    tie_word_embeddings: bool = False
    qkv_name: str = "qkv_proj"
    qkv_bias: bool = False
    rope_scaling: dict[str, Any] = field(default_factory=dict)
    sliding_window_size: int = -1  # a query sees the keys less than this many positions back; -1: all
    kv_cache_dtype: str = "float32"  # a build option (``lowbit compile --kv-cache-dtype``), not HF's
    prefill_activations: str = "fp"  # a build option (``lowbit compile --prefill-activations``)

    @classmethod
    def from_dict(
        cls, cfg: dict[str, Any], qkv_name: str = "qkv_proj", qkv_bias: bool = False
    ) -> LlamaConfig:
        """From an HF ``config.json`` or an MLC ``model_config`` (``position_embedding_base`` …);
        the fused q/k/v linear's name and bias come from the architecture record."""
        rope = dict(cfg.get("rope_parameters") or {})
        scaling = dict(cfg.get("rope_scaling") or rope)
        if scaling.get("rope_type", scaling.get("type", "default")) in ("default", None):
            scaling = {}
        elif scaling.get("rope_type", scaling.get("type")) != "llama3":
            raise LowbitError(f"unsupported RoPE scaling {scaling.get('rope_type')!r} (supported: llama3)")
        scaling.pop("rope_theta", None)
        theta = cfg.get("position_embedding_base") or cfg.get("rope_theta") or rope.get("rope_theta")
        if theta is None:
            theta = 10000.0
            logger.info("rope_theta not in config; using %s", theta)
        heads = cfg["num_attention_heads"]
        window = cfg.get("context_window_size") or cfg.get("max_position_embeddings")
        if not window:
            raise LowbitError("config has neither context_window_size nor max_position_embeddings")
        sliding = int(cfg.get("sliding_window_size") or -1)
        chunk = int(cfg.get("prefill_chunk_size") or min(window, 2048))
        if sliding > 0:
            # The KV cache windows a chunk's attention to the cached keys but not to the chunk's
            # own, and a query that sees no cached key at all gets garbage: a chunk shorter than
            # the window keeps its own keys inside the window and at least one cached key in it.
            if sliding < 2:
                raise LowbitError(f"sliding_window_size must be at least 2, got {sliding}")
            chunk = min(chunk, sliding - 1)
        return cls(
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_attention_heads=heads,
            num_hidden_layers=cfg["num_hidden_layers"],
            num_key_value_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            vocab_size=cfg["vocab_size"],
            rms_norm_eps=cfg["rms_norm_eps"],
            rope_theta=float(theta),
            context_window_size=int(window),
            prefill_chunk_size=chunk,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_name=qkv_name,
            qkv_bias=qkv_bias or bool(cfg.get("attention_bias", False)),
            rope_scaling=scaling,
            sliding_window_size=sliding,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _param_specs(scheme: Scheme, n: int, k: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name → (shape, dtype) of a linear's stored parameters under ``scheme``."""
    if isinstance(scheme, NoQuant):
        return {"weight": ((n, k), scheme.model_dtype)}
    specs = {
        "q_weight": ((n, scheme.words_per_row(k)), "uint32"),
        "q_scale": (scheme.spec.scales_shape(n, k), scheme.model_dtype),
    }
    if isinstance(scheme, AsymGroupQuant):
        specs["q_zero"] = ((n, scheme.num_groups(k)), "uint8")
    return specs


def _one_token_per_row(x: Tensor) -> bool:
    """x [B, 1, K] (decode, batch decode) in fp32: the int8 GEMV's input."""
    return len(x.shape) == 3 and isinstance(x.shape[1], int) and x.shape[1] == 1 and x.dtype == "float32"


def _prefill_rows(x: Tensor) -> bool:
    """x [1, T, K] with T symbolic (a prefill chunk) in fp32: the int8 GEMM's input."""
    return (len(x.shape) == 3 and isinstance(x.shape[0], int) and x.shape[0] == 1
            and not isinstance(x.shape[1], int) and x.dtype == "float32")


def _as_words(z: nn.Parameter) -> Tensor:
    """The uint8 [N, G] zero points as uint32 [N·G/4] words: a view, no copy."""
    n, g = (int(d) for d in z.shape)
    if n * g % 4:
        raise LowbitError(f"zero points [{n}, {g}] are not whole 32-bit words; WGSL cannot read them")
    view = rx.op.memory.view(z._expr, rx.ShapeExpr([n * g // 4]), "uint32")
    return op.wrap_nested(view, name="q_zero_words")


class QuantLinear(nn.Module):
    """``y = x·Wᵀ (+ b)`` as one fused dequantize→matmul kernel over the stored layout."""

    def __init__(self, in_features: int, out_features: int, scheme: Scheme, bias: bool = False):
        self.in_features, self.out_features, self.scheme = in_features, out_features, scheme
        specs = _param_specs(scheme, out_features, in_features)
        self.param_names = list(specs)
        for name, (shape, dtype) in specs.items():
            setattr(self, name, nn.Parameter(shape, dtype))
        self.bias = nn.Parameter((out_features,), scheme.model_dtype) if bias else None

    def params(self) -> list[nn.Parameter]:
        return [getattr(self, name) for name in self.param_names]

    def _kernel_params(self, x: Tensor) -> list:
        """x and the stored parameters, the zero points viewed as words where the target needs."""
        params: list = self.params()
        if "q_zero" in self.param_names and zero_points_as_words():
            params[self.param_names.index("q_zero")] = _as_words(self.q_zero)
        return [x, *params]

    def _int8_kernel(self, x: Tensor) -> tuple[str, Callable] | None:
        """(name, kernel) of the int8-activation kernel that runs on ``x``, if one does."""
        if _one_token_per_row(x) and int8_decode_applies(self.scheme, self.in_features):
            terms = decode_terms()
            if (terms == 1 and not isinstance(x.shape[0], int)
                    and gemm_supports(self.scheme, self.in_features, self.out_features)):
                return "q_batch_int8", batch_decode_int8  # batch decode: the GEMM for many sequences
            return "q_gemv_int8", partial(gemv_int8, terms=terms)
        if _prefill_rows(x) and int8_prefill_applies(self.scheme, self.in_features, self.out_features):
            return "q_gemm_int8", gemm_int8
        return None

    def forward(self, x: Tensor) -> Tensor:
        if int8 := self._int8_kernel(x):
            name, kernel = int8
            out = Tensor.placeholder((*x.shape[:-1], self.out_features), "float32")
            func = kernel(self.scheme, self.out_features, self.in_features)
            y = op.tensor_ir_op(func, name, [x, *self.params()], out)
        else:
            y = op.tensor_expr_op(q_matmul_te(self.scheme, self.in_features), "q_matmul", self._kernel_params(x))
        if self.bias is not None:
            y = y + self.bias.astype(x.dtype)
        return y


class QuantEmbedding(QuantLinear):
    """Token embedding [vocab, hidden] in a linear's layout; doubles as the tied lm_head."""

    def __init__(self, vocab: int, hidden: int, scheme: Scheme, dtype: str):
        super().__init__(hidden, vocab, scheme)
        self.dtype = dtype

    def forward(self, input_ids: Tensor) -> Tensor:  # type: ignore[override]
        f = q_embed_te(self.scheme, self.in_features, self.dtype)
        return op.tensor_expr_op(f, "q_embed", [input_ids, *self.params()])

    def lm_head_forward(self, x: Tensor) -> Tensor:
        return super().forward(x)


class RMSNorm(nn.Module):
    def __init__(self, hidden: int, eps: float, param_dtype: str):
        self.weight = nn.Parameter((hidden,), param_dtype)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)

    def after_add(self, x: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        """``(x + d, norm(x + d))``: a residual add and the norm that reads it, one kernel on CPU."""
        return add_rms_norm(x, d, self.weight, self.eps)


def fused_qkv_attention(kv: PagedKVCache, layer_id: int, qkv: Tensor, cfg: LlamaConfig, sm_scale: float) -> Tensor:
    """The KV cache's attention over ``qkv`` [b, s, heads, head_dim], run in the cache's dtype
    (TVM's cache takes q, k and v in it), the output back in ``qkv``'s."""
    if qkv.dtype == cfg.kv_cache_dtype:
        return kv.attention_with_fused_qkv(layer_id, qkv, cfg.num_attention_heads, sm_scale=sm_scale)
    out = kv.attention_with_fused_qkv(layer_id, qkv.astype(cfg.kv_cache_dtype), cfg.num_attention_heads, sm_scale=sm_scale)
    return out.astype(qkv.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig, scheme: Scheme):
        self.cfg = cfg
        out = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim
        self.qkv_name = cfg.qkv_name
        setattr(self, self.qkv_name, QuantLinear(cfg.hidden_size, out, scheme, bias=cfg.qkv_bias))
        self.o_proj = QuantLinear(cfg.num_attention_heads * cfg.head_dim, cfg.hidden_size, scheme)
        self.sm_scale = cfg.head_dim**-0.5

    def qkv(self, x: Tensor) -> Tensor:
        """The fused projection per head, [b, s, q heads + 2 · kv heads, head_dim] (RoPE is
        applied inside the KV cache's attention; a family's subclass may transform q/k here)."""
        c = self.cfg
        b, s, _ = x.shape
        return op.reshape(getattr(self, self.qkv_name)(x), (b, s, c.num_attention_heads + 2 * c.num_key_value_heads, c.head_dim))

    def forward(self, x: Tensor, kv: PagedKVCache, layer_id: int) -> Tensor:
        c = self.cfg
        b, s, _ = x.shape
        out = fused_qkv_attention(kv, layer_id, self.qkv(x), c, self.sm_scale)
        return self.o_proj(op.reshape(out, (b, s, c.num_attention_heads * c.head_dim)))


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig, scheme: Scheme):
        self.gate_up_proj = QuantLinear(cfg.hidden_size, 2 * cfg.intermediate_size, scheme)
        self.down_proj = QuantLinear(cfg.intermediate_size, cfg.hidden_size, scheme)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(gated_silu(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    attention_class: type[Attention] = Attention

    def __init__(self, cfg: LlamaConfig, scheme: Scheme):
        self.self_attn = self.attention_class(cfg, scheme)
        self.mlp = MLP(cfg, scheme)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, scheme.model_dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, scheme.model_dtype)

    def forward(self, h: Tensor, kv: PagedKVCache, layer_id: int) -> Tensor:
        h, x = self.post_attention_layernorm.after_add(h, self.self_attn(self.input_layernorm(h), kv, layer_id))
        return h + self.mlp(x)


class LlamaModel(nn.Module):
    layer_class: type[DecoderLayer] = DecoderLayer

    def __init__(self, cfg: LlamaConfig, scheme: Scheme, dtype: str):
        self.embed_tokens = QuantEmbedding(cfg.vocab_size, cfg.hidden_size, scheme.edge, dtype)
        self.layers = nn.ModuleList([self.layer_class(cfg, scheme) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, scheme.model_dtype)

    def forward(self, h: Tensor, kv: PagedKVCache) -> Tensor:
        for i, layer in enumerate(self.layers):
            h = layer(h, kv, i)
        return self.norm(h)


def _last_token(x: Tensor) -> Tensor:
    def index(t: te.Tensor) -> te.Tensor:
        b, s, d = t.shape
        return te.compute((b, 1, d), lambda i, _, j: t[i, s - 1, j], name="index")

    return op.tensor_expr_op(index, "index", [x])


class LlamaForCausalLM(nn.Module):
    """MLC's exports: embed, prefill, decode, batch_prefill, batch_decode, create_paged_kv_cache,
    plus ``prefill_all_logits`` (every position's logits, for perplexity)."""

    config_class = LlamaConfig
    body_class: type[LlamaModel] = LlamaModel  # the decoder stack (a family subclasses its layers)
    rope_mode: RopeMode = RopeMode.NORMAL  # NONE: the family's attention rotates q and k itself

    def __init__(self, cfg: LlamaConfig, scheme: Scheme, target: Target, dtype: str = "float32"):
        self.cfg, self.scheme, self.target, self.dtype = cfg, scheme, target, dtype
        self.model = self.body_class(cfg, scheme, dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = QuantLinear(cfg.hidden_size, cfg.vocab_size, scheme.edge)

    def get_logits(self, h: Tensor) -> Tensor:
        """Logits in fp32 whatever the compute dtype (sampling and scoring read them as fp32)."""
        if self.cfg.tie_word_embeddings:
            logits = self.model.embed_tokens.lm_head_forward(h)
        else:
            logits = self.lm_head(h)
        return logits if logits.dtype == "float32" else logits.astype("float32")

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.model.embed_tokens(input_ids)

    def prefill(self, input_embed: Tensor, paged_kv_cache: PagedKVCache):
        h = self.model(input_embed, paged_kv_cache)
        return self.get_logits(_last_token(h)), paged_kv_cache

    def prefill_all_logits(self, input_embed: Tensor, paged_kv_cache: PagedKVCache):
        return self.get_logits(self.model(input_embed, paged_kv_cache)), paged_kv_cache

    def decode(self, input_embed: Tensor, paged_kv_cache: PagedKVCache):
        return self.get_logits(self.model(input_embed, paged_kv_cache)), paged_kv_cache

    def batch_prefill(self, input_embeds: Tensor, logit_positions: Tensor, paged_kv_cache: PagedKVCache):
        h = self.model(input_embeds, paged_kv_cache)
        # clip, not relax's default "fast" (which TVM warns may segfault): positions are the runtime's
        h = op.wrap_nested(rx.op.take(h._expr, logit_positions._expr, axis=1, mode="clip"), name="take")
        return self.get_logits(h), paged_kv_cache

    def batch_decode(self, input_embeds: Tensor, paged_kv_cache: PagedKVCache):
        return self.get_logits(self.model(input_embeds, paged_kv_cache)), paged_kv_cache

    def attention_kinds(self) -> list[str]:
        """The KV cache's attention kind of each layer: ``mha_sliding`` layers keep every key in
        the cache and attend to the window's (HF's sliding-window mask), so the context is not
        capped at the window."""
        kind = "mha_sliding" if self.cfg.sliding_window_size > 0 else "mha"
        return [kind] * self.cfg.num_hidden_layers

    def cache_kinds(self) -> list[str]:
        """The KV cache's layers: :meth:`attention_kinds`, and one unused ``mha`` layer where none
        is (TVM allocates fused-qkv attention's buffers only for ``mha``)."""
        kinds = self.attention_kinds()
        return kinds if "mha" in kinds else [*kinds, "mha"]

    def attention_softcap(self) -> float:
        """The cap of the attention scores' soft-capping, ``cap · tanh(s / cap)``; 0: none."""
        return 0.0

    def finish_module(self, mod: IRModule) -> IRModule:
        """The exported module with lowbit's CPU attention and split-rotary kernels on CPU targets, and the
        attention kernels left from TVM soft-capped where the family caps its scores."""
        c, cap = self.cfg, self.attention_softcap()
        if self.target.kind.name == "llvm":
            mod = use_lowbit_attention(mod, self.target, c.num_key_value_heads, c.num_attention_heads,
                                       c.head_dim, c.kv_cache_dtype, c.sliding_window_size,
                                       len(self.cache_kinds()), cap)
            mod = use_lowbit_split_rotary(mod, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
                                          c.kv_cache_dtype, c.rope_theta, dict(c.rope_scaling), c.head_dim)
        return softcap_attention(mod, cap, self.target) if cap else mod

    def create_paged_kv_cache(
        self,
        max_batch_size: tirx.Var,
        max_total_seq_len: tirx.Var,
        prefill_chunk_size: tirx.Var,
        page_size: tirx.Var,
        support_sliding_window: tirx.Var,
    ) -> PagedKVCache:
        c = self.cfg
        kinds, window_args = self.cache_kinds(), {}
        if "mha_sliding" in kinds:
            window_args = {"layer_sliding_window_size": c.sliding_window_size}
        return TIRPagedKVCache(
            attn_kind=kinds,
            max_batch_size=max_batch_size,
            max_total_seq_len=max_total_seq_len,
            prefill_chunk_size=prefill_chunk_size,
            page_size=page_size,
            support_sliding_window=support_sliding_window,
            layer_partition=rx.ShapeExpr([0, len(kinds)]),
            num_hidden_layers=len(kinds),
            num_attention_heads=c.num_attention_heads,
            num_key_value_heads=c.num_key_value_heads,
            qk_head_dim=c.head_dim,
            v_head_dim=c.head_dim,
            mla_original_qk_head_dim=0,
            mla_original_v_head_dim=0,
            rope_mode=self.rope_mode,
            rope_scale=1,
            rope_theta=c.rope_theta,
            rope_scaling=dict(c.rope_scaling),
            rope_ext_factors=rx.prim_value(0),
            rotary_dim=c.head_dim,
            enable_disaggregation=False,
            dtype=c.kv_cache_dtype,
            target=self.target,
            **window_args,
        )

    def get_default_spec(self) -> nn.spec.ModuleSpec:
        h, dt = self.cfg.hidden_size, self.dtype
        kv = nn.spec.Object(object_type=PagedKVCache)
        packed = {"param_mode": "packed", "effect_mode": "none"}
        spec = {
            "embed": {"input_ids": nn.spec.Tensor(["seq_len"], "int32"), "$": packed},
            "prefill": {"input_embed": nn.spec.Tensor([1, "seq_len", h], dt), "paged_kv_cache": kv, "$": packed},
            "prefill_all_logits": {"input_embed": nn.spec.Tensor([1, "seq_len", h], dt), "paged_kv_cache": kv, "$": packed},
            "decode": {"input_embed": nn.spec.Tensor([1, 1, h], dt), "paged_kv_cache": kv, "$": packed},
            "batch_prefill": {
                "input_embeds": nn.spec.Tensor([1, "seq_len", h], dt),
                "logit_positions": nn.spec.Tensor(["batch_size"], "int32"),
                "paged_kv_cache": kv,
                "$": packed,
            },
            "batch_decode": {"input_embeds": nn.spec.Tensor(["batch_size", 1, h], dt), "paged_kv_cache": kv, "$": packed},
            "create_paged_kv_cache": {
                "max_batch_size": int,
                "max_total_seq_len": int,
                "prefill_chunk_size": int,
                "page_size": int,
                "support_sliding_window": int,
                "$": {"param_mode": "none", "effect_mode": "none"},
            },
        }
        return nn.spec.ModuleSpec.from_raw(spec, self)
