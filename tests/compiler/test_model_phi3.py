"""Phi-3 / Phi-3.5 (fused qkv_proj and gate_up_proj, plain RoPE or longrope): a tiny random
model through convert → compile (llvm) → the paged-KV-cache engine.

q0f32: the MLC folder read back is transformers' model bit for bit, and the compiled model's
logits match it within ``ATOL`` (:func:`check_compiled_matches_torch`: prefill of 24 tokens,
every position, 16 decode steps, batch_decode), with plain (partial) RoPE and with longrope past 16
original positions (the 24-token prompt already takes the long factors, as transformers' forward
does). A prompt within the original length that decodes past it matches transformers' KV-cache
generation step by step (short factors, then long ones for the new tokens while the cached keys
keep theirs); one forward over the whole sequence differs there, as it does in transformers.
LET's scalings and shifts fold exactly into the fused linears. ``lowbit calibrate`` (RTN) and
GPTQ run on it; an OmniQuant (LET) W4 g128 checkpoint converts to ``w4a16g128asym`` and compiles
to the fake-quant model.
"""

from __future__ import annotations

import numpy as np
import torch
from family_checks import check_omniquant_w4g128_compiles, check_rtn_and_gptq, random_ids
from test_model_llama import ATOL, _assert_close, check_compiled_matches_torch
from tiny_models import save_tiny, tiny_phi3_config

from lowbit.architectures import ARCHITECTURES
from lowbit.calib import let
from lowbit.calib.blocks import decoder_layers
from lowbit.compiler.mlc_reader import load_mlc_model, read_mlc
from lowbit.compiler.tensor_cache import read_tensor_cache
from lowbit.models import load_torch_model

ORIGINAL = 16  # tiny_phi3_config's original_max_position_embeddings



def _check_mlc_folder(hf_dir, mlc) -> dict:
    """MLC's phi3 names and shapes; the reader gives back transformers' model bit for bit."""
    arrays, _ = read_tensor_cache(mlc)
    assert arrays["transformer.h.1.mixer.qkv_proj.weight"].shape == ((4 + 2 + 2) * 24, 96)
    assert arrays["transformer.h.1.mlp.gate_up_proj.weight"].shape == (2 * 160, 96)
    assert arrays["transformer.h.0.ln.weight"].shape == (96,)
    ids = random_ids(0, 2, 19)
    with torch.no_grad():
        assert torch.equal(load_mlc_model(mlc)(ids).logits, load_torch_model(hf_dir)(ids).logits)
    return read_mlc(mlc).chat_config


def test_phi3_plain_rope_q0f32_matches_transformers(tmp_path):
    """Phi-3-mini-4k's plain RoPE and sliding window (here 12 of 128, so the 24-token prompt
    runs past it), on half of each head (partial_rotary_factor, as Phi-4-mini has) and with tied
    embeddings (as Phi-4-mini)."""
    config = tiny_phi3_config(rope_scaling=None, partial_rotary_factor=0.5, tie_word_embeddings=True,
                              sliding_window=12)
    hf = save_tiny(tmp_path / "hf", config)
    engine = check_compiled_matches_torch(hf, "q0f32", tmp_path)
    assert engine.prefill_chunk == 11
    chat = _check_mlc_folder(hf, tmp_path / "mlc-q0f32")
    assert chat["model_config"]["sliding_window_size"] == 12
    ref, ids = load_mlc_model(tmp_path / "mlc-q0f32"), random_ids(0, 1, 24)
    with torch.no_grad():
        windowed = ref(ids).logits
        ref.config.sliding_window = None  # the window matters: plain causal attention differs
        assert (ref(ids).logits - windowed)[:, 12:].abs().max() > 100 * ATOL
    assert chat["model_config"]["rope_scaling"] is None
    assert chat["model_config"]["partial_rotary_factor"] == 0.5
    assert chat["conv_template"]["name"] == "phi-3"
    assert chat["conv_template"]["roles"] == {"user": "<|user|>", "assistant": "<|assistant|>"}


def test_phi3_longrope_q0f32_matches_transformers(tiny_phi3_dir, tmp_path):
    engine = check_compiled_matches_torch(tiny_phi3_dir, "q0f32", tmp_path)
    mlc = tmp_path / "mlc-q0f32"
    scaling = _check_mlc_folder(tiny_phi3_dir, mlc)["model_config"]["rope_scaling"]
    assert scaling["rope_type"] == "longrope" and scaling["original_max_position_embeddings"] == ORIGINAL
    check_decode_across_the_original_length(mlc, engine)


def check_decode_across_the_original_length(mlc, engine) -> None:
    """A 10-token prompt decoded to 26 tokens ≡ transformers with its KV cache at every step;
    one forward over the whole sequence agrees up to the original length only."""
    ref = load_mlc_model(mlc)
    seq = np.random.default_rng(2).integers(0, 512, 10).tolist()
    engine.remove_sequence(0)  # room for one more (check_compiled_matches_torch's first)
    seq_id = engine.add_sequence()
    logits = engine.prefill(seq_id, seq)
    with torch.no_grad():
        out = ref(torch.tensor([seq]), use_cache=True)
        cache, want = out.cache, out.logits[0, -1].numpy()
        for step in range(16):
            _assert_close(logits, want, f"step {step} ({len(seq)} tokens)")
            full = ref(torch.tensor([seq])).logits[0, -1].numpy()
            if len(seq) <= ORIGINAL:
                _assert_close(full, want, f"one forward at {len(seq)} tokens")
            else:  # every key rotated with the long factors: not what cached generation computes
                assert np.abs(full - want).max() > 10 * ATOL
            seq.append(int(np.argmax(want)))
            logits = engine.decode(seq_id, seq[-1])
            out = ref(torch.tensor([seq[-1:]]), cache=cache, use_cache=True)
            cache, want = out.cache, out.logits[0, -1].numpy()


def test_let_folds_exactly_into_the_fused_linears(tiny_phi3_dir):
    """Random LET scales (the norms'; v → o on qkv_proj's v rows; up → down on gate_up_proj's up
    rows) and shifts leave the logits unchanged; q/k and gate rows take the norm's scale only."""
    model = load_torch_model(tiny_phi3_dir)
    layout = ARCHITECTURES["phi3"].layout
    sizes = {"qkv": 96, "fc1": 96, "out": 2 * 24, "down": 160}
    g = torch.Generator().manual_seed(0)
    scales = [{k: torch.exp(torch.randn(n, generator=g)) for k, n in sizes.items()} for _ in range(2)]
    shifts = [{k: torch.randn(n, generator=g) for k, n in sizes.items() if k != "down"} for _ in range(2)]
    block = decoder_layers(model)[0]
    qkv, gate_up = block.self_attn.qkv_proj.weight.clone(), block.mlp.gate_up_proj.weight.clone()
    with torch.no_grad():
        before = model(random_ids(3)).logits
        for i, b in enumerate(decoder_layers(model)):
            let.fold_(b, layout, scales[i], shifts[i])
        torch.testing.assert_close(model(random_ids(3)).logits, before, rtol=1e-5, atol=1e-5)
    qk_rows = (4 + 2) * 24
    torch.testing.assert_close(block.self_attn.qkv_proj.weight[:qk_rows], qkv[:qk_rows] * scales[0]["qkv"])
    torch.testing.assert_close(block.mlp.gate_up_proj.weight[:160], gate_up[:160] * scales[0]["fc1"])
    biased = {n for n, _ in block.named_parameters() if n.endswith(".bias")}
    assert biased == {"input_layernorm.bias", "post_attention_layernorm.bias", "self_attn.qkv_proj.bias",
                      "self_attn.o_proj.bias", "mlp.gate_up_proj.bias"}



def test_phi3_rtn_and_gptq_calibrate(tiny_phi3_dir, tmp_path, monkeypatch):
    """``lowbit calibrate --method rtn`` writes the fake-quant model; GPTQ runs on the fused
    linears."""
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    check_rtn_and_gptq(tiny_phi3_dir, tmp_path, 2 * 4)  # qkv_proj o_proj gate_up_proj down_proj


def test_phi3_omniquant_w4g128_compiles_to_the_fake_quant_model(tiny_phi3_dir, tmp_path,
                                                                  monkeypatch):
    """OmniQuant W4 g128 with LET (the norm scales reach qkv_proj and gate_up_proj, v → o and
    up → down scale the fused linears' last rows) → fused checkpoint → ``w4a16g128asym``: its
    linears are the fake-quant model's bit for bit, and the compiled model matches the model the
    folder holds."""
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    check_omniquant_w4g128_compiles(tiny_phi3_dir, tmp_path)
