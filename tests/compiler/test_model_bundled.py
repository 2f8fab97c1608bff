"""The bundled SmolLM2-135M compiled for llvm: test-split perplexity equals PyTorch's.

Both sides hold the same weights (the MLC folder; PyTorch through the converter's reader) and
score the same 16 windows of 512 tokens. The llvm build computes in fp32 as PyTorch does, so the
figures agree to fp32 rounding (1e-5 relative), far inside the project's 0.5 % bar.
"""

from __future__ import annotations

import pytest

from lowbit.compiler.mlc_reader import load_mlc_model
from lowbit.corpus import eval_windows, split_tokens
from lowbit.evaluate.perplexity import perplexity, torch_logits_fn
from lowbit.evaluate.run import evaluate_compiled_perplexity
from lowbit.models import load_tokenizer

SEQLEN, WINDOWS = 512, 16


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["w4a16g128asym", "q4f16_1"])
def test_compiled_perplexity_matches_pytorch(bundled_build, scheme):
    build = bundled_build(scheme)
    mlc, lib = build.mlc_dir, build.lib
    compiled = evaluate_compiled_perplexity(mlc, lib, "test", SEQLEN, WINDOWS, progress=False)
    ids = eval_windows(split_tokens(load_tokenizer(mlc), "test"), SEQLEN, WINDOWS)
    reference = perplexity(torch_logits_fn(load_mlc_model(mlc)), ids, 4, progress=False)
    assert compiled["tokens"] == reference.tokens
    assert abs(compiled["ppl"] / reference.ppl - 1) < 1e-5, (compiled["ppl"], reference.ppl)
