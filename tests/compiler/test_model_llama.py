"""Compiled model ≡ PyTorch model holding the same dequantized weights (tiny Llama and Qwen2).

Chain: HF folder → ``lowbit convert`` (each scheme) → MLC folder → (a) the converter's reader
gives a transformers model with the dequantized weights, (b) our relax model compiled for llvm
runs on the packed weights. Both compute in fp32, so logits agree to ``ATOL`` (measured ~4e-7):
prefill (last position), every position (``prefill_all_logits``), then 16 decode steps fed the
reference's greedy tokens; greedy tokens are compared where the top-2 margin exceeds ``ATOL``.
Then ``batch_decode`` of several sequences of different lengths ≡ ``decode`` of each alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowbit.compiler.compile import CompileArgs, compile_model
from lowbit.compiler.convert import ConvertArgs, convert
from lowbit.compiler.mlc_reader import load_mlc_model
from lowbit.compiler.schemes import SCHEMES
from lowbit.runtime.engine import Engine

# Every scheme computes in fp32 on CPU (weights are dequantized to fp32 inside the matmul, the
# KV cache is fp32), and the reference holds the same dequantized weights in fp32: differences
# come from summation order only, for the fp16-stored schemes as for the fp32 ones.
ATOL = 1e-4
PROMPT, DECODE_STEPS = 24, 16
BATCH = 5  # batch_decode rows: whole row tiles of the batch kernel and a partial one


def compiled_engine(mlc_dir, tmp_path) -> Engine:
    lib = compile_model(CompileArgs(mlc_dir, "llvm", tmp_path / "model.so"), progress=False)
    return Engine(mlc_dir, lib, max_batch_size=1 + 2 * BATCH, context_window=128)


def _assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    err = np.abs(got - want).max()
    assert err <= ATOL * max(1.0, np.abs(want).max()), f"{what}: max abs error {err:.3g}"


def check_compiled_matches_torch(hf_dir, scheme: str, tmp_path) -> Engine:
    mlc = tmp_path / f"mlc-{scheme}"
    convert(ConvertArgs(str(hf_dir), scheme, mlc, progress=False))
    ref = load_mlc_model(mlc)
    engine = compiled_engine(mlc, tmp_path)
    vocab = ref.config.vocab_size
    ids = np.random.default_rng(0).integers(0, vocab, PROMPT).tolist()

    def ref_logits(tokens: list[int]) -> np.ndarray:
        with torch.no_grad():
            return ref(torch.tensor([tokens])).logits[0].numpy()

    full = ref_logits(ids)
    engine.add_sequence(0)
    _assert_close(engine.all_logits(0, ids), full, "all positions")
    engine.remove_sequence(0)
    engine.add_sequence(0)
    logits, seq = engine.prefill(0, ids), list(ids)
    _assert_close(logits, full[-1], "prefill")
    for step in range(DECODE_STEPS):
        want = ref_logits(seq)[-1] if step else full[-1]
        top2 = np.sort(want)[-2:]
        if top2[1] - top2[0] > ATOL:
            assert int(np.argmax(logits)) == int(np.argmax(want)), f"greedy token differs at step {step}"
        seq.append(int(np.argmax(want)))
        logits = engine.decode(0, seq[-1])
        _assert_close(logits, ref_logits(seq)[-1], f"decode step {step}")
    check_batch_decode_matches_decode(engine, 0, vocab)
    return engine


def check_batch_decode_matches_decode(engine: Engine, parent: int, vocab: int) -> None:
    """Sequences forked from ``parent`` and grown by 0..BATCH-1 tokens, each with a twin: one
    ``batch_decode`` of all of them ≡ ``decode`` of each twin alone."""
    rng = np.random.default_rng(1)
    seqs, twins = [], []
    for i in range(BATCH):
        seq = engine.fork_sequence(parent)
        if i:
            engine.prefill(seq, rng.integers(0, vocab, i).tolist())
        seqs.append(seq)
        twins.append(engine.fork_sequence(seq))
    tokens = rng.integers(0, vocab, BATCH).tolist()
    batch = engine.decode_batch(seqs, tokens)
    for i, (twin, token) in enumerate(zip(twins, tokens, strict=True)):
        _assert_close(batch[i], engine.decode(twin, token), f"batch_decode row {i}")


# Llama runs every scheme but one of NF3's two groups, which share every kernel but the group
# constant; both see partial groups (K = 96, 160). Qwen2 differs from Llama in its q/k/v biases and
# untied head, which no scheme treats differently, so it runs one scheme per kernel family (each
# case compiles a model: CI time). The 8-bit head (``…_q8head``) changes only the embedding and
# lm_head: once tied (Llama), once not (Qwen2).
BODY_SCHEMES = [name for name, s in SCHEMES.items() if getattr(s, "head", None) is None]
LLAMA_SCHEMES = sorted(s for s in BODY_SCHEMES if s != "nf3a16g64") + ["w2a16g64asym_q8head"]
QWEN2_SCHEMES = ["q0f16", "q4f16_1", "q3f16_1", "w4a16g32asym", "w3a16g64asym", "w2a16g128asym", "nf3a16g64_q8head"]


@pytest.mark.parametrize("scheme", LLAMA_SCHEMES)
def test_llama_compiled_matches_torch(tiny_llama_dir, scheme, tmp_path):
    check_compiled_matches_torch(tiny_llama_dir, scheme, tmp_path)


@pytest.mark.parametrize("scheme", QWEN2_SCHEMES)
def test_qwen2_compiled_matches_torch(tiny_qwen2_dir, scheme, tmp_path):
    check_compiled_matches_torch(tiny_qwen2_dir, scheme, tmp_path)


def test_llama3_rope_scaling(tmp_path):
    from tiny_models import save_tiny, tiny_llama_config

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    hf = save_tiny(tmp_path / "hf", tiny_llama_config(rope_scaling=scaling, tie_word_embeddings=False))
    check_compiled_matches_torch(hf, "q0f32", tmp_path)
