"""Mistral (sliding window 8, head_dim 32 ≠ hidden / heads, GQA 4:2): a tiny random model through
convert → compile (llvm) → the paged-KV-cache engine, on sequences longer than the window.

q0f32: the compiled model's logits match transformers' within ``ATOL`` for every position (prefill
in chunks of window - 1 tokens), the last one, 16 decode steps past the window and batch_decode
(:func:`check_compiled_matches_torch`, 24 prompt tokens); forks of a long sequence match it too.
``lowbit calibrate`` (RTN) and GPTQ run on it. Without a window (``sliding_window: null``), an
OmniQuant (LET) W4 g128 checkpoint converts to ``w4a16g128asym`` and compiles to the fake-quant
model (every compile costs ~25 s: one per case).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from family_checks import check_omniquant_w4g128_compiles, check_rtn_and_gptq
from test_model_llama import ATOL, _assert_close, check_compiled_matches_torch
from tiny_models import save_tiny, tiny_mistral_config

from lowbit.architectures import ARCHITECTURES
from lowbit.compiler.mlc_reader import load_mlc_model, read_mlc
from lowbit.errors import LowbitError
from lowbit.runtime.batching import BatchEngine, Request, pages_for
from lowbit.runtime.engine import Engine, GenerationConfig

WINDOW = 8


def test_mistral_sliding_window_matches_transformers(tiny_mistral_dir, tmp_path):
    check_compiled_matches_torch(tiny_mistral_dir, "q0f32", tmp_path)
    mlc = tmp_path / "mlc-q0f32"
    chat = read_mlc(mlc).chat_config
    assert chat["conv_template"]["name"] == "mistral_default"  # no chat template in the folder
    model_config = chat["model_config"]
    assert model_config["sliding_window_size"] == WINDOW
    assert model_config["context_window_size"] == 256  # not capped at the window
    engine = Engine(mlc, tmp_path / "model.so", max_batch_size=2, context_window=128)
    assert engine.prefill_chunk == WINDOW - 1
    ref = load_mlc_model(mlc)
    assert ref.config.sliding_window == WINDOW

    def ref_logits(tokens: list[int]) -> np.ndarray:
        with torch.no_grad():
            return ref(torch.tensor([tokens])).logits[0].numpy()

    ids = np.random.default_rng(2).integers(0, 512, 30).tolist()
    tail = [7, 8, 9, 10, 11]
    engine.add_sequence(0)
    engine.prefill(0, ids)
    for length in (3, 16, 30):  # inside a page, at a page boundary, the whole sequence
        child = engine.fork_sequence(0, length=length)
        got = engine.all_logits(child, tail)
        _assert_close(got, ref_logits(ids[:length] + tail)[-len(tail):], f"fork at {length}")
        engine.remove_sequence(child)
    # the batching engine reserves pages for each choice's copy of the prompt
    request = Request(ids, GenerationConfig(max_new_tokens=4), n=2)
    assert BatchEngine(engine, max_running=2)._reservation(request) == pages_for(2 * 30 + 2 * 4) + 3
    windowed = ref_logits(ids)
    ref.config.sliding_window = None  # the window matters: plain causal attention differs
    assert np.abs(ref_logits(ids)[WINDOW:] - windowed[WINDOW:]).max() > 100 * ATOL


def test_mistral_rope_scaling_is_refused():
    config = tiny_mistral_config(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4})
    with pytest.raises(LowbitError, match="no RoPE scaling; this model has 'linear'"):
        ARCHITECTURES["mistral"].mlc_params(config.to_dict())




def test_mistral_rtn_and_gptq_calibrate(tiny_mistral_dir, tmp_path, monkeypatch):
    """``lowbit calibrate --method rtn`` writes the fake-quant model; GPTQ runs on the layout."""
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    check_rtn_and_gptq(tiny_mistral_dir, tmp_path, 2 * 7)


def test_mistral_omniquant_w4g128_compiles_to_the_fake_quant_model(tmp_path, monkeypatch):
    """``sliding_window: null`` (Mistral v0.2 and later: plain causal attention), OmniQuant W4 g128
    with LET → fused checkpoint → ``w4a16g128asym``: its linears are the fake-quant model's bit
    for bit, and the compiled model matches the model the folder holds."""
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    hf = save_tiny(tmp_path / "hf", tiny_mistral_config(sliding_window=None))
    mlc = check_omniquant_w4g128_compiles(hf, tmp_path)
    assert mlc.chat_config["model_config"]["sliding_window_size"] == -1
