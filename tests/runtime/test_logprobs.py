"""Token logprobs: values equal torch's log-softmax; each token's text share joins to the emitted text."""

from __future__ import annotations

import numpy as np
import torch

from lowbit.runtime.logprobs import LogprobTrack, token_logprob


def _bytes(token: int) -> bytes:
    return f"<{token}>".encode()


def test_token_logprob_and_top_alternatives_match_torch():
    logits = np.random.default_rng(0).normal(scale=4.0, size=1000).astype(np.float32)
    entry = token_logprob(logits, 17, "x", 5, _bytes)
    ref = torch.log_softmax(torch.tensor(logits, dtype=torch.float64), -1)
    top = torch.topk(ref, 5)
    assert abs(entry.logprob - ref[17].item()) < 1e-9
    assert [t for t, _, _ in entry.top] == top.indices.tolist()
    np.testing.assert_allclose([lp for _, _, lp in entry.top], top.values.numpy(), atol=1e-9)
    assert entry.bytes == b"<17>" and entry.top[0][1] == _bytes(top.indices[0].item())


def test_entries_are_released_with_their_text_and_join_to_it():
    track = LogprobTrack(0, _bytes)
    logits = np.zeros(50, dtype=np.float32)
    pieces = ["Hel", "lo", "", "é", " wor", "ld"]  # "" : a token ending inside a multi-byte character
    for token, piece in enumerate(pieces):
        track.add(logits, token, piece)
    first = track.release(4, final=False)  # "Hell" emitted: "Hel" whole, "lo" not yet
    assert [e.token for e in first] == [0]
    rest = track.release(len("".join(pieces)), final=True)
    assert "".join(e.text for e in (*first, *rest)) == "".join(pieces)
    assert [e.token for e in rest] == [1, 2, 3, 4, 5]
    assert all(abs(e.logprob + np.log(50)) < 1e-9 for e in rest)


def test_a_stop_string_cuts_the_token_it_starts_in_and_drops_the_rest():
    track = LogprobTrack(0, _bytes)
    logits = np.zeros(8, dtype=np.float32)
    for token, piece in enumerate(["The", " end", ".<", "|stop|>", " more"]):
        track.add(logits, token, piece)
    emitted = len("The end.")  # the stop string "<|stop|>" starts inside token 2
    out = track.release(emitted, final=True)
    assert [e.token for e in out] == [0, 1, 2] and "".join(e.text for e in out) == "The end."
    assert out[-1].bytes == b"<2>"  # the cut token keeps its own bytes and logprob


def test_logprobs_of_generated_and_prompt_tokens_equal_torch(tiny_chat):
    """The batch engine's logprobs (decode steps and a scored prompt) against the HF model in fp32
    on the same token sequence."""
    from transformers import AutoModelForCausalLM

    from lowbit.runtime.batching import BatchEngine, Delta, PromptScores, Request
    from lowbit.runtime.engine import Engine, GenerationConfig

    engine = Engine(tiny_chat.mlc_dir, tiny_chat.lib, max_batch_size=2, prefill_chunk=8)
    batch = BatchEngine(engine, 1).start()
    prompt = engine.tokenizer.encode("The quick brown fox jumps over the lazy dog, then")
    scores, generated, text = (), [], ""
    for ev in batch.stream(Request(prompt, GenerationConfig(10, logprobs=3), prompt_logprobs=3)):
        if isinstance(ev, PromptScores):
            scores = ev.logprobs
        elif isinstance(ev, Delta):
            generated += ev.logprobs
            text += ev.text
    batch.shutdown()
    assert [e.token for e in scores] == prompt and scores[0].logprob is None
    assert "".join(e.text for e in generated) == text and len(generated) == 10
    model = AutoModelForCausalLM.from_pretrained(tiny_chat.hf_dir, dtype=torch.float32)
    ids = prompt + [e.token for e in generated]
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    entries = [*scores[1:], *generated]  # the entry for ids[i] is scored at position i - 1
    got = np.array([e.logprob for e in entries])
    want = ref[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    for i, e in enumerate(entries):
        assert [t for t, _, _ in e.top] == torch.topk(ref[i], 3).indices.tolist()
