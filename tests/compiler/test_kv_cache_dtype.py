"""``lowbit compile --kv-cache-dtype float16``: the CPU library keeps q, k and v in fp16.

The reference is the PyTorch model on the same weights with the same roundings: q, k and v
rounded to fp16 after the projection, RoPE computed in fp32 from them and rounded to fp16 once
(TVM's ``split_rotary``), the attention in fp32 over those values, and its output rounded to
fp16 before ``o_proj``. The compiled logits match it within fp16 tolerance,
and on average sit 20× further from the plain fp32 reference, so a cache left in fp32 fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from transformers.models.llama import modeling_llama

from lowbit.cli import main
from lowbit.compiler.compile import CompileArgs, compile_model
from lowbit.compiler.convert import ConvertArgs, convert
from lowbit.compiler.mlc_reader import load_mlc_model
from lowbit.runtime.engine import Engine

PROMPT, DECODE_STEPS = 40, 8  # the prompt spans pages (16 keys) and a decode chunk boundary


def _fp16(t: torch.Tensor) -> torch.Tensor:
    return t.half().float()


@pytest.fixture
def fp16_kv_reference(monkeypatch):
    """Turns a Llama reference into one that rounds q, k, v and the attention output as the fp16 cache does."""
    rope = modeling_llama.apply_rotary_pos_emb

    def rope_in_fp16(q, k, cos, sin, *args, **kwargs):
        q, k = rope(_fp16(q), _fp16(k), cos, sin, *args, **kwargs)
        return _fp16(q), _fp16(k)

    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", rope_in_fp16)

    def apply(model: torch.nn.Module) -> torch.nn.Module:
        for layer in model.model.layers:
            layer.self_attn.v_proj.register_forward_hook(lambda _m, _i, out: _fp16(out))
            layer.self_attn.o_proj.register_forward_pre_hook(lambda _m, args: (_fp16(args[0]),))
        return model

    return apply


def test_fp16_kv_cache_matches_fp16_rounding_reference(tiny_llama_dir, tmp_path, fp16_kv_reference):
    mlc = tmp_path / "mlc"
    convert(ConvertArgs(str(tiny_llama_dir), "q0f32", mlc, progress=False))
    lib = compile_model(CompileArgs(mlc, "llvm", tmp_path / "kv16.so", kv_cache_dtype="float16"), progress=False)
    engine = Engine(mlc, lib, context_window=128)
    assert engine.metadata.kv_dtype == "float16"
    ref32 = load_mlc_model(mlc)
    ref16 = fp16_kv_reference(load_mlc_model(mlc))
    ids = np.random.default_rng(0).integers(0, ref32.config.vocab_size, PROMPT).tolist()

    def logits(model: torch.nn.Module, tokens: list[int]) -> np.ndarray:
        with torch.no_grad():
            return model(torch.tensor([tokens])).logits[0].numpy()

    engine.add_sequence(0)
    got, seq = [engine.prefill(0, ids)], list(ids)
    for _ in range(DECODE_STEPS):
        seq.append(int(np.argmax(got[-1])))
        got.append(engine.decode(0, seq[-1]))
    got = np.stack(got)
    want16, want32 = logits(ref16, seq)[PROMPT - 1:], logits(ref32, seq)[PROMPT - 1:]
    scale = np.abs(want32).max()
    assert np.abs(got - want16).max() < 1e-4 * scale, "fp16 KV: beyond fp16 tolerance of its reference"
    # a rounding boundary that fp32 summation order flips moves single values by an fp16 ulp, so
    # the max error cannot tell the two references apart; the mean error can (measured 20×)
    err16, err32 = np.abs(got - want16).mean(), np.abs(got - want32).mean()
    assert err32 > 5 * err16, f"fp16 KV: mean error {err32:.3g} from fp32, {err16:.3g} from the fp16 reference"

def test_kv_cache_dtype_is_a_cpu_choice(tiny_llama_dir, tmp_path):
    mlc = tmp_path / "mlc"
    convert(ConvertArgs(str(tiny_llama_dir), "q4f16_1", mlc, progress=False))
    out = tmp_path / "model.so"
    result = CliRunner().invoke(main, ["compile", str(mlc), "--target", "cuda", "--kv-cache-dtype", "float32",
                                       "-o", str(out)])
    assert result.exit_code != 0 and not out.exists()
    assert "only CPU targets choose" in result.output and "Traceback" not in result.output
