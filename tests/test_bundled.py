"""The bundled model: the cached HF folder equals transformers' own GGUF load (DATA.md checks)."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.corpus import join_documents, wiki_documents
from lowbit.evaluate.perplexity import perplexity, torch_logits_fn
from lowbit.models import BUNDLED, load_tokenizer, load_torch_model
from lowbit.packages import packaged_file


@pytest.fixture(scope="module")
def cached(bundled_dir):
    return load_torch_model(bundled_dir), load_tokenizer(bundled_dir)


def test_cached_folder_equals_gguf_load(cached):
    from transformers import AutoModelForCausalLM

    gguf = packaged_file(BUNDLED["smollm2-135m"].source)
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    model, _ = cached
    ids = torch.tensor([[504, 3575, 282, 4649, 314, 216, 28, 1073, 42, 7]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)


def test_greedy_output_matches_data_md(cached):
    model, tok = cached
    enc = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=16, do_sample=False)
    text = tok.decode(out[0, enc.input_ids.shape[1]:])
    assert text.startswith(" Paris.\n\nThe answer is: 2018-01")


def test_reference_perplexity(cached):
    model, tok = cached
    ids = tok(join_documents(wiki_documents()), add_special_tokens=False)["input_ids"][:2048]
    result = perplexity(torch_logits_fn(model), torch.tensor(ids).view(4, 512).numpy(), progress=False)
    assert math.isclose(result.ppl, 10.93, abs_tol=0.005)
