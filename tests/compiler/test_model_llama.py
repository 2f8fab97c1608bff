"""Compiled model ≡ PyTorch model holding the same dequantized weights (tiny Llama and Qwen2).

Chain: HF folder → ``lowbit convert`` (each scheme) → MLC folder → (a) the converter's reader
gives a transformers model with the dequantized weights, (b) our relax model compiled for llvm
runs on the packed weights. Both compute in fp32, so logits agree to ``ATOL`` (measured ~4e-7):
prefill (last position), every position (``prefill_all_logits``), then 16 decode steps fed the
reference's greedy tokens; greedy tokens are compared where the top-2 margin exceeds ``ATOL``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm

from lowbit.compiler.compile import export_model, read_chat_config
from lowbit.compiler.convert import ConvertArgs, convert
from lowbit.compiler.mlc_reader import load_mlc_model
from lowbit.compiler.pipeline import build
from lowbit.compiler.session import Session, params_for
from lowbit.compiler.tensor_cache import read_tensor_cache

ATOL = 1e-4  # fp32 compute on both sides; differences come from summation order only
TARGET = tvm.target.Target({"kind": "llvm"})
PROMPT, DECODE_STEPS = 24, 16


def compiled_session(mlc_dir) -> Session:
    chat = read_chat_config(mlc_dir)
    mod, meta = export_model(chat["model_type"], chat["model_config"], chat["quantization"], TARGET)
    vm = tvm.relax.VirtualMachine(build(mod, TARGET), tvm.cpu())
    arrays, _ = read_tensor_cache(mlc_dir)
    return Session.from_vm(vm, meta, params_for(meta, arrays, tvm.cpu()), max_len=128)


def _assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    err = np.abs(got - want).max()
    assert err <= ATOL * max(1.0, np.abs(want).max()), f"{what}: max abs error {err:.3g}"


def check_compiled_matches_torch(hf_dir, scheme: str, tmp_path) -> None:
    mlc = tmp_path / f"mlc-{scheme}"
    convert(ConvertArgs(str(hf_dir), scheme, mlc, progress=False))
    ref = load_mlc_model(mlc)
    sess = compiled_session(mlc)
    vocab = ref.config.vocab_size
    ids = np.random.default_rng(0).integers(0, vocab, PROMPT).tolist()

    def ref_logits(tokens: list[int]) -> np.ndarray:
        with torch.no_grad():
            return ref(torch.tensor([tokens])).logits[0].numpy()

    full = ref_logits(ids)
    _assert_close(sess.all_logits(ids), full, "all positions")
    sess.reset()
    logits, seq = sess.prefill(ids), list(ids)
    _assert_close(logits, full[-1], "prefill")
    for step in range(DECODE_STEPS):
        want = ref_logits(seq)[-1] if step else full[-1]
        top2 = np.sort(want)[-2:]
        if top2[1] - top2[0] > ATOL:
            assert int(np.argmax(logits)) == int(np.argmax(want)), f"greedy token differs at step {step}"
        seq.append(int(np.argmax(want)))
        logits = sess.decode(seq[-1])
        _assert_close(logits, ref_logits(seq)[-1], f"decode step {step}")


@pytest.mark.parametrize(
    "scheme", ["q0f32", "q4f16_1", "q3f16_1", "w4a16g128asym", "w3a16g64asym", "w2a16g32asym"]
)
def test_llama_compiled_matches_torch(tiny_llama_dir, scheme, tmp_path):
    check_compiled_matches_torch(tiny_llama_dir, scheme, tmp_path)


@pytest.mark.parametrize("scheme", ["q4f16_1", "w3a16g128asym", "w4a16g32asym"])
def test_qwen2_compiled_matches_torch(tiny_qwen2_dir, scheme, tmp_path):
    check_compiled_matches_torch(tiny_qwen2_dir, scheme, tmp_path)


def test_llama3_rope_scaling(tmp_path):
    from tiny_models import save_tiny, tiny_llama_config

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    hf = save_tiny(tmp_path / "hf", tiny_llama_config(rope_scaling=scaling, tie_word_embeddings=False))
    check_compiled_matches_torch(hf, "q0f32", tmp_path)
