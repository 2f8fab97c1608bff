"""``bench/cpu_decode.py --contexts``: its FLOP and byte counts against independent ones."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import cpu_decode  # noqa: E402

from lowbit.runtime.speed import kv_bytes  # noqa: E402


def _config(model) -> dict:
    c = model.config
    return {"hidden_size": c.hidden_size, "head_dim": c.hidden_size // c.num_attention_heads,
            "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads, "intermediate_size": c.intermediate_size}


def test_prefill_flops_count_the_layers_linears_and_causal_attention(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    linears = sum(m.weight.numel() for name, m in model.model.layers.named_modules()
                  if isinstance(m, torch.nn.Linear))
    cfg = _config(model)
    tokens = 37
    attention, linear = cpu_decode.prefill_flops(cfg, tokens)
    assert linear == 2 * tokens * linears  # a multiply and an add per weight per token
    # query i (0-based) sees i + 1 keys: q·k and p·v, 2 · head_dim FLOPs each, per query head
    keys = sum(i + 1 for i in range(tokens))
    assert attention == keys * 4 * cfg["head_dim"] * cfg["num_attention_heads"] * cfg["num_hidden_layers"]


def test_kv_bytes_are_the_cache_of_one_sequence(tiny_llama_dir):
    """What one decode step reads is what HF's cache holds for the context: every layer's k and v."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float16)
    with torch.no_grad():
        cache = model(torch.arange(1, 30)[None], use_cache=True).past_key_values
    held = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert kv_bytes(_config(model), "float16", 29) == held


def test_context_table_ratios():
    row = {"engine": "lowbit-llvm", "scheme": "q4f16_1+int8+kv16", "kv_dtype": "float16", "threads": 2,
           "context": 8000, "new_tokens": 32, "prefill_tok_s": 60.0, "decode_tok_s": 40.0,
           "weight_bytes": 75_000_000, "kv_bytes": 185_000_000, "read_gb_s": 26.0,
           "attention_gflop_s": 30.0, "linear_gflop_s": 120.0}
    q40 = {**row, "engine": "llama.cpp", "scheme": "Q4_0", "prefill_tok_s": 120.0, "decode_tok_s": 50.0,
           "attention_gflop_s": None, "linear_gflop_s": None}
    lines = cpu_decode.context_markdown([row, q40]).splitlines()
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert cells[4:8] == ["60.0", "0.50", "40.0", "0.80"]  # × llama.cpp Q4_0 at the same context
    assert cells[8] == "75.0 + 185.0" and cells[9] == "0.40"  # 40 tok/s of 26 GB/s ÷ 260 MB = 100
    assert cells[10] == "30.0 / 120.0"


def test_contexts_keep_each_rows_best_prefill_and_decode():
    """One engine, two contexts, two rounds after a warm-up: each row keeps its faster prefill
    (with that run's GFLOP/s) and, separately, its faster decode; the warm-up counts for nothing."""
    runs = iter([(99.0, 99.0, 99.0),  # warm-up
                 (20.0, 4.0, 2.0), (30.0, 2.0, 3.0),  # round 1: contexts 8, 64
                 (15.0, 6.0, 4.0), (35.0, 1.0, 5.0)])  # round 2

    def run(ids: list[int]) -> cpu_decode.ContextRow:
        prefill, decode, gflops = next(runs)
        return cpu_decode.ContextRow("e", "s", "float16", 2, len(ids), 4, prefill, decode, 1, 1,
                                     attention_gflop_s=gflops, linear_gflop_s=gflops)

    rows = cpu_decode.bench_contexts([run], list(range(100)), [8, 64], rounds=2)
    assert [(r.context, r.prefill_tok_s, r.decode_tok_s, r.attention_gflop_s) for r in rows] == [
        (8, 20.0, 6.0, 2.0), (64, 35.0, 2.0, 5.0)]
