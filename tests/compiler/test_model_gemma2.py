"""Gemma 2 (layers sliding, full, sliding with a window of 8; attention and final-logit
soft-capping; query scale 20^-1/2; GELU-tanh; four 1 + w norms per layer; tied embeddings): a
tiny random model through convert → compile (llvm) → the paged-KV-cache engine, on sequences
longer than the window.

q0f32: the compiled model's logits match transformers' within ``ATOL`` for every position (prefill
in chunks of window - 1 tokens), the last one, 16 decode steps past the window and batch_decode
(:func:`check_compiled_matches_torch`, 24 prompt tokens); the window and both soft-caps change
transformers' logits well beyond that tolerance, so each is exercised. ``lowbit calibrate`` (RTN)
and GPTQ run on it (their calibration windows are longer than the sliding window, so each block
needs its own mask), and an OmniQuant (LET, into 1 + w norms) W4 g128 checkpoint converts to
``w4a16g128asym`` and compiles to the fake-quant model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from family_checks import check_omniquant_w4g128_compiles, check_rtn_and_gptq
from test_model_llama import ATOL, check_compiled_matches_torch
from tvm.target import Target

from lowbit.compiler.kernels.attention_softcap import softcap_attention
from lowbit.compiler.mlc_reader import load_mlc_model, read_mlc
from lowbit.errors import LowbitError

WINDOW = 8


def test_gemma2_matches_transformers(tiny_gemma2_dir, tmp_path):
    engine = check_compiled_matches_torch(tiny_gemma2_dir, "q0f32", tmp_path)
    assert engine.prefill_chunk == WINDOW - 1
    mlc = read_mlc(tmp_path / "mlc-q0f32")
    model_config = mlc.chat_config["model_config"]
    assert model_config["layer_types"] == ["sliding_attention", "full_attention", "sliding_attention"]
    assert model_config["context_window_size"] == 256  # not capped at the window
    ref = load_mlc_model(tmp_path / "mlc-q0f32")
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, 512, 24))[None]

    def logits() -> np.ndarray:
        with torch.no_grad():
            return ref(ids).logits[0].numpy()

    full = logits()
    ref.config.final_logit_softcapping = None
    assert np.abs(logits() - full).max() > 100 * ATOL
    ref.config.final_logit_softcapping = 10.0
    for layer in ref.model.layers:
        layer.self_attn.attn_logit_softcapping = None
    assert np.abs(logits() - full).max() > 100 * ATOL
    for layer in ref.model.layers:
        layer.self_attn.attn_logit_softcapping, layer.self_attn.sliding_window = 5.0, None
    ref.config.layer_types = ["full_attention"] * 3
    assert np.abs(logits() - full).max() > 100 * ATOL


def test_gemma2_norms_are_stored_as_one_plus_w(tiny_gemma2_dir, tmp_path):
    from safetensors.torch import load_file

    from lowbit.compiler.convert import ConvertArgs, convert
    from lowbit.compiler.tensor_cache import read_tensor_cache

    mlc = tmp_path / "mlc"
    convert(ConvertArgs(str(tiny_gemma2_dir), "q0f32", mlc, progress=False))
    arrays, _ = read_tensor_cache(mlc)
    hf = load_file(tiny_gemma2_dir / "model.safetensors")
    for name in ("model.layers.1.pre_feedforward_layernorm.weight", "model.norm.weight"):
        np.testing.assert_array_equal(np.asarray(arrays[name]), (hf[name] + 1).numpy())
    assert "lm_head.weight" not in arrays


def test_softcap_is_refused_for_gpu_kernels():
    with pytest.raises(LowbitError, match="CPU targets only, not cuda"):
        softcap_attention(None, 50.0, Target("cuda"))


def test_gemma2_rtn_and_gptq_calibrate(tiny_gemma2_dir, tmp_path, monkeypatch):
    """``lowbit calibrate --method rtn`` writes the fake-quant model; GPTQ runs on the layout."""
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    check_rtn_and_gptq(tiny_gemma2_dir, tmp_path, 3 * 7)


def test_gemma2_omniquant_w4g128_compiles_to_the_fake_quant_model(tiny_gemma2_dir, tmp_path, monkeypatch):
    """OmniQuant W4 g128 with LET (its norm scales folded into 1 + w) → fused checkpoint →
    ``w4a16g128asym``: its linears are the fake-quant model's bit for bit, and the compiled model
    matches the model the folder holds."""
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    check_omniquant_w4g128_compiles(tiny_gemma2_dir, tmp_path)
