"""``perplexity()`` against an independent computation: HF's own causal-LM loss (``labels=``)."""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch

from lowbit.evaluate.perplexity import perplexity, torch_logits_fn


def test_perplexity_equals_hf_labels_loss(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    rng = np.random.default_rng(zlib.crc32(b"perplexity"))
    windows = rng.integers(0, model.config.vocab_size, (5, 33))
    with torch.inference_mode():  # HF shifts the labels itself and averages over the T-1 targets
        losses = [model(torch.as_tensor(w[None]), labels=torch.as_tensor(w[None])).loss.item() for w in windows]
    result = perplexity(torch_logits_fn(model), windows, batch_size=2, progress=False)
    assert result.tokens == 5 * 32 and result.windows == 5
    assert math.isclose(result.nll, float(np.mean(losses)), rel_tol=1e-6)
    assert math.isclose(result.ppl, math.exp(np.mean(losses)), rel_tol=1e-6)
