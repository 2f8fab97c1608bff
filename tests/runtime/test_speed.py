"""``lowbit bench``: the speed report's arithmetic against an independent count of the folder's
bytes, and the thread count it runs with."""

from __future__ import annotations

import json
import math

from click.testing import CliRunner

from lowbit.cli import main
from lowbit.runtime.speed import Profile


def test_bench_reports_bytes_bandwidth_and_threads(tiny_chat, monkeypatch):
    monkeypatch.setenv("TVM_NUM_THREADS", "1")  # restored after the test
    result = CliRunner().invoke(main, ["bench", str(tiny_chat.mlc_dir), "--model-lib", str(tiny_chat.lib),
                                       "--prompt-tokens", "12", "--new-tokens", "4", "--threads", "2", "--json"])
    assert result.exit_code == 0, result.output
    speed = json.loads(result.output.strip().splitlines()[-1])
    index = json.loads((tiny_chat.mlc_dir / "tensor-cache.json").read_text())
    assert speed["weight_bytes"] == sum(r["nbytes"] for shard in index["records"] for r in shard["records"])
    assert speed["threads"] == 2 and speed["prompt_tokens"] == 12 and speed["new_tokens"] == 4
    assert speed["prefill_tok_s"] > 0 and speed["decode_tok_s"] > 0 and speed["read_gb_s"] > 0.1
    # the fp32 KV cache read per step, at the 4 steps' mean context (12 + 2): every layer's k and v
    hf = json.loads((tiny_chat.hf_dir / "config.json").read_text())
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    assert speed["kv_bytes"] == 2 * hf["num_hidden_layers"] * hf["num_key_value_heads"] * head_dim * 4 * 14
    read = speed["weight_bytes"] + speed["kv_bytes"]
    assert math.isclose(speed["decode_gb_s"], speed["decode_tok_s"] * read / 1e9)
    assert math.isclose(speed["limit_tok_s"], speed["read_gb_s"] * 1e9 / read)


def test_bench_table(tiny_chat):
    result = CliRunner().invoke(main, ["bench", str(tiny_chat.mlc_dir), "--model-lib", str(tiny_chat.lib),
                                       "--prompt-tokens", "8", "--new-tokens", "2"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines[-3:]] == ["prefill", "decode", "limit"]


def test_op_kind_drops_relax_numbering_keeps_dtypes():
    from lowbit.runtime.speed import op_kind

    assert op_kind("q_gemv_int83") == op_kind("q_gemv_int8") == "q_gemv_int8"
    assert op_kind("fused_reshape8_reshape9") == "fused_reshape_reshape"
    assert op_kind("rms_norm2") == "rms_norm" and op_kind("cast_float16") == "cast_float16"


def test_bench_profile_counts_every_call(tiny_chat):
    """Per decode token of the 2-layer tiny model: 9 quantized-linear calls (qkv, o, gate/up,
    down per layer, then the lm_head; down fused with the residual add), one attention per
    layer, 5 RMS norms (the post-attention ones fused with o's residual add); the kinds' times add
    up to the step."""
    result = CliRunner().invoke(main, ["bench", str(tiny_chat.mlc_dir), "--model-lib", str(tiny_chat.lib),
                                       "--prompt-tokens", "8", "--new-tokens", "3", "--profile", "--json"])
    assert result.exit_code == 0, result.output
    profile = json.loads(result.output.strip().splitlines()[-1])["profile"]
    calls = {op["kind"]: op["calls"] for op in profile["ops"]}
    assert calls["q_matmul"] + calls["fused_q_matmul_add"] == 9  # down_proj: + residual
    assert calls["fused_q_matmul_add"] == 2 and calls["add_rms_norm"] == 2  # o_proj's residual + the norm after
    assert calls["rms_norm"] + calls["add_rms_norm"] == 5
    assert calls["vm.builtin.attention_kv_cache_attention_with_fused_qkv"] == 2
    assert all(op["ms"] >= 0 for op in profile["ops"]) and profile["timing_us"] > 0
    assert math.isclose(sum(op["ms"] for op in profile["ops"]), profile["step_ms"], rel_tol=1e-6)
    assert Profile.from_dict(profile).to_dict() == profile  # the bench JSON reads back whole
    table = CliRunner().invoke(main, ["bench", str(tiny_chat.mlc_dir), "--model-lib", str(tiny_chat.lib),
                                      "--prompt-tokens", "8", "--new-tokens", "2", "--profile"])
    assert table.exit_code == 0 and "q_matmul" in table.output and "decode step" in table.output


def test_prefill_profile_counts_every_call(tiny_chat):
    """A prefill of 20 tokens in chunks of 8: each of the 2 layers' attention runs once per chunk."""
    from lowbit.runtime.engine import Engine
    from lowbit.runtime.speed import profile_prefill

    engine = Engine(tiny_chat.mlc_dir, tiny_chat.lib, context_window=64, prefill_chunk=8)
    profile = profile_prefill(engine, list(range(1, 21)))
    assert profile.unit == "prefill of 20 tokens"
    assert profile.ms_of(lambda kind: "attention" in kind) > 0
    assert {op.kind: op.calls for op in profile.ops}["vm.builtin.attention_kv_cache_attention_with_fused_qkv"] == 2 * 3
    assert math.isclose(sum(op.ms for op in profile.ops), profile.step_ms, rel_tol=1e-6)
