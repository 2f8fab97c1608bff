"""The bundled model end to end: convert → `lowbit compile` → the runtime, vs PyTorch greedy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lowbit.cli import main

PROMPTS = ["The capital of France is", "def fibonacci(n):\n", "Water boils at"]
NEW = 16


@pytest.mark.slow
def test_q0f32_greedy_run_equals_torch(bundled_dir, bundled_build):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    build = bundled_build("q0f32")
    mlc, lib = build.mlc_dir, build.lib
    tokenizer = AutoTokenizer.from_pretrained(bundled_dir)
    model = AutoModelForCausalLM.from_pretrained(bundled_dir, dtype=torch.float32).eval()
    for prompt in PROMPTS:
        ids = tokenizer(prompt).input_ids
        with torch.no_grad():
            ref = model.generate(torch.tensor([ids]), max_new_tokens=NEW, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
        result = CliRunner().invoke(main, ["run", str(mlc), "--model-lib", str(lib), "--prompt", prompt,
                                           "--max-new-tokens", str(NEW), "--temperature", "0"])
        assert result.exit_code == 0, result.output
        assert result.stdout == tokenizer.decode(ref, skip_special_tokens=True) + "\n"


@pytest.mark.slow
def test_quantized_greedy_equals_torch_where_the_margin_allows(bundled_w4):  # q4f16_1 passes too
    """Teacher-forced on PyTorch's greedy tokens (same dequantized weights): logits agree, and the
    argmax agrees wherever PyTorch's top-2 margin exceeds the logits' tolerance."""
    from lowbit.compiler.mlc_reader import load_mlc_model
    from lowbit.runtime.engine import Engine

    tol = 2e-3  # fp32 compute; fp16 scales are dequantized exactly on both sides
    mlc, lib = bundled_w4.mlc_dir, bundled_w4.lib
    model = load_mlc_model(mlc)
    engine = Engine(mlc, lib)
    decided = 0
    for prompt in PROMPTS:
        ids = engine.tokenizer.encode(prompt)
        with torch.no_grad():
            seq = model.generate(torch.tensor([ids]), max_new_tokens=NEW, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)[0].tolist()
            ref = model(torch.tensor([seq])).logits[0].numpy()
        if engine.has_sequence(0):
            engine.remove_sequence(0)
        engine.add_sequence(0)
        got = [engine.prefill(0, ids)] + [engine.decode(0, t) for t in seq[len(ids) : -1]]
        for step, logits in enumerate(got):
            want = ref[len(ids) - 1 + step]
            np.testing.assert_allclose(logits, want, atol=tol * max(1.0, np.abs(want).max()) / 10)
            top2 = np.sort(want)[-2:]
            if top2[1] - top2[0] > tol:
                decided += 1
                assert int(np.argmax(logits)) == seq[len(ids) + step]
    assert decided >= len(PROMPTS) * NEW // 2
