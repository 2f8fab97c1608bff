"""``eval ppl --model-lib --decode``: one-token steps give the prefill path's perplexity on an fp
library (the same model; only the kernels and summation order differ)."""

from __future__ import annotations

import math

from lowbit.evaluate.run import evaluate_compiled_perplexity


def test_decode_scoring_matches_prefill_scoring(tiny_chat, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Note {i}: a small model reads this line, token by token. " * 6 for i in range(12)))
    args = (tiny_chat.mlc_dir, tiny_chat.lib, "test", 24, 3, corpus)
    prefill = evaluate_compiled_perplexity(*args, progress=False)
    decode = evaluate_compiled_perplexity(*args, progress=False, decode=True)
    assert decode["decode"] and not prefill["decode"] and decode["decode_activations"] == "fp"
    assert decode["prefill_activations"] == "fp"
    assert decode["tokens"] == prefill["tokens"] > 0
    assert math.isclose(decode["ppl"], prefill["ppl"], rel_tol=1e-5)
