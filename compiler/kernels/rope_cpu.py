"""lowbit's CPU kernel for the paged KV cache's split of fused q/k/v with rotary embedding.

The runtime calls ``fused_rope`` (TVM's ``llama_rope_with_position_map``) once per layer and
step: it splits ``qkv [T, h_q + 2·h_kv, d]`` into q, k and v and rotates q and k at each token's
position. TVM's kernel is one scalar loop that evaluates the rotation's frequency, a ``pow``,
a ``cos`` and a ``sin`` for every element of every head: 15 × 64 of each per token and layer on
the bundled model, several percent of a decode step. Here each token's ``cos``/``sin`` of its
``rotary_dim`` frequencies are computed once, by TVM's own frequency expressions (the same
:func:`~tvm.relax.frontend.nn.llm.position_embedding.switch_rope_freq_func`, so RoPE scaling
such as llama3's is unchanged), and every head's rotation is then vector multiply-adds. The
arguments are TVM's (``apply_rope`` 0: split only, as the families that rotate q and k
themselves run it). Prompts of :data:`PARALLEL_TOKENS` tokens or more run their tokens in
parallel; one decode token stays on the calling thread (a parallel launch costs more).
"""

from __future__ import annotations

from typing import Any

from tvm import IRModule, tirx
from tvm.relax.frontend.nn.llm.position_embedding import switch_rope_freq_func
from tvm.script import tirx as T

from lowbit.compiler.kernels.kv_pages_cpu import LOWBIT_KERNEL

SYMBOL = "fused_rope"  # TVM's split-rotary kernel in an exported module
PARALLEL_TOKENS = 16


def supports(rope_scaling: dict[str, Any]) -> bool:
    """Whether the kernel covers a RoPE scaling: the rotate-half layouts without extension
    factors (TVM's ``longrope`` kernel takes them as an argument; ``gptj`` pairs neighbours)."""
    return rope_scaling.get("rope_type") not in ("gptj", "longrope")


def split_rotary_kernel(h_q: int, h_kv: int, d: int, dtype: str, theta: float, rope_scaling: dict[str, Any],
                        rotary_dim: int) -> tirx.PrimFunc:
    """``q, k, v`` from ``qkv [T, h_q + 2·h_kv, d]``, q and k rotated at ``position_map[t]`` over
    their first ``rotary_dim`` dimensions (rotate-half: dimension j < r/2 pairs with j + r/2).
    Positions are not rescaled: the models here create their KV cache with ``rope_scale`` 1."""
    assert supports(rope_scaling) and rotary_dim % 2 == 0 and rotary_dim <= d
    heads, half = h_q + 2 * h_kv, rotary_dim // 2
    freq = switch_rope_freq_func(rope_scaling)

    def angle(fn: int, pos: tirx.PrimExpr, j: tirx.PrimExpr) -> tirx.PrimExpr:
        """cos (fn 0) or sin (fn 1) of dimension j's angle at ``pos``, as TVM's kernel has it."""
        cos, sin, bindings = freq(pos, j, rotary_dim, theta, "float32")
        expr = (cos, sin)[fn]
        for var, value in bindings.items():
            expr = tirx.Let(var, value, expr)
        return expr

    @T.macro
    def rotate(qkv, s, src, out, dst, cos, sin, apply_rope):
        """Head ``src`` of token s's qkv into head ``dst`` of ``out``, rotated if ``apply_rope``."""
        if apply_rope > T.int64(0):
            for j in T.vectorized(half):
                out[s, dst, j] = T.Cast(dtype, cos[j] * T.Cast("float32", qkv[s, src, j])
                                        - sin[j] * T.Cast("float32", qkv[s, src, j + half]))
            for j in T.vectorized(half):
                out[s, dst, j + half] = T.Cast(dtype, cos[j + half] * T.Cast("float32", qkv[s, src, j + half])
                                               + sin[j + half] * T.Cast("float32", qkv[s, src, j]))
            for j in T.serial(rotary_dim, d):
                out[s, dst, j] = qkv[s, src, j]
        else:
            for j in T.vectorized(d):
                out[s, dst, j] = qkv[s, src, j]

    @T.macro
    def token(qkv, position_map, q, k, v, apply_rope, s):
        cos = T.decl_buffer((rotary_dim,), "float32")
        sin = T.decl_buffer((rotary_dim,), "float32")
        for j in T.serial(rotary_dim):
            cos[j] = angle(0, T.Cast("float32", position_map[s]), j)
            sin[j] = angle(1, T.Cast("float32", position_map[s]), j)
        for h in T.serial(h_q):
            rotate(qkv, s, h, q, h, cos, sin, apply_rope)
        for h in T.serial(h_kv):
            rotate(qkv, s, h_q + h, k, h, cos, sin, apply_rope)
        for h, j in T.grid(h_kv, d):
            v[s, h, j] = qkv[s, h_q + h_kv + h, j]

    @T.prim_func
    def kernel(qkv_handle: T.handle, position_map_handle: T.handle, q_handle: T.handle, k_handle: T.handle,
               v_handle: T.handle, apply_rope: T.int64):
        T.func_attr({"global_symbol": SYMBOL, "tirx.noalias": True, "tirx.is_scheduled": True,
                     LOWBIT_KERNEL: True})
        seq_len = T.int32()
        pm_off = T.int32()
        qkv = T.match_buffer(qkv_handle, (seq_len, heads, d), dtype)
        position_map = T.match_buffer(position_map_handle, (seq_len,), "int32", elem_offset=pm_off)
        q = T.match_buffer(q_handle, (seq_len, h_q, d), dtype)
        k = T.match_buffer(k_handle, (seq_len, h_kv, d), dtype)
        v = T.match_buffer(v_handle, (seq_len, h_kv, d), dtype)
        if seq_len >= PARALLEL_TOKENS:
            for s in T.parallel(seq_len):
                token(qkv, position_map, q, k, v, apply_rope, s)
        else:
            for s in T.serial(seq_len):
                token(qkv, position_map, q, k, v, apply_rope, s)

    return kernel


def use_lowbit_split_rotary(mod: IRModule, h_q: int, h_kv: int, d: int, dtype: str, theta: float,
                            rope_scaling: dict[str, Any], rotary_dim: int) -> IRModule:
    """``mod`` with TVM's split-rotary kernel replaced by :func:`split_rotary_kernel` (unchanged
    for a RoPE scaling it does not cover, or a module without the kernel)."""
    if not supports(rope_scaling):
        return mod
    for gv, func in mod.functions.items():
        if isinstance(func, tirx.PrimFunc) and func.attrs and func.attrs.get("global_symbol") == SYMBOL:
            mod[gv] = split_rotary_kernel(h_q, h_kv, d, dtype, theta, rope_scaling, rotary_dim)
    return mod
