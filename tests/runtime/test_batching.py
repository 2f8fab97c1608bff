"""Continuous batching on the compiled tiny Llama: outputs equal the plain engine's, whatever joins,
leaves or shares a prefix; pages and slots come back."""

from __future__ import annotations

import threading

import pytest

from lowbit.errors import LowbitError
from lowbit.runtime.batching import BatchEngine, Delta, Done, Failed, QueueFull, Refused, Request
from lowbit.runtime.engine import Engine, GenerationConfig
from lowbit.runtime.sampler import SamplingParams

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village",
           "Water boils at", "1, 2, 3, 4,", "The quick brown fox"]
NEW = 12


@pytest.fixture(scope="module")
def reference(tiny_chat) -> dict[str, str]:
    """Each prompt generated alone by the plain engine (greedy)."""
    engine = Engine(tiny_chat.mlc_dir, tiny_chat.lib)
    out = {}
    for prompt in PROMPTS:
        out[prompt] = "".join(engine.generate(engine.tokenizer.encode(prompt), GenerationConfig(NEW)))
        engine.remove_sequence(0)
    return out


def _batch(tiny_chat, max_running: int = 4, **kw) -> BatchEngine:
    engine = Engine(tiny_chat.mlc_dir, tiny_chat.lib, max_batch_size=2 * max_running, **kw)
    return BatchEngine(engine, max_running).start()


def _run(batch: BatchEngine, prompt: str | list[int], config=None, n: int = 1) -> tuple[list[str], Done]:
    ids = batch.engine.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
    texts = [""] * n
    for ev in batch.stream(Request(ids, config or GenerationConfig(NEW), n)):
        if isinstance(ev, Delta):
            texts[ev.index] += ev.text
        else:
            assert isinstance(ev, Done), ev
            return texts, ev
    raise AssertionError("no Done event")


def _concurrently(batch: BatchEngine, prompts: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}

    def one(prompt: str) -> None:
        out[prompt] = _run(batch, prompt)[0][0]

    threads = [threading.Thread(target=one, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def test_concurrent_greedy_equals_each_alone(tiny_chat, reference):
    # 6 requests on 4 slots with 3-token prefill chunks: requests queue, join running ones
    # between steps, and prefill in several chunks interleaved with decode steps
    batch = _batch(tiny_chat, max_running=4, prefill_chunk=3)
    try:
        assert _concurrently(batch, PROMPTS) == reference
        snap = batch.snapshot()
        assert (snap.running, snap.queued) == (0, 0)
        assert snap.generated_tokens == NEW * len(PROMPTS)
    finally:
        batch.shutdown()


def test_prefill_chunks_interleave_with_decode_steps(tiny_chat):
    batch = _batch(tiny_chat, max_running=2, prefill_chunk=4)
    calls: list[str] = []
    engine = batch.engine
    prefill, decode = engine.prefill, engine.decode

    def logged(name, fn):
        def call(*args):
            calls.append(name)
            return fn(*args)
        return call

    engine.prefill, engine.decode = logged("prefill", prefill), logged("decode", decode)
    try:
        short = engine.tokenizer.encode("Hi")
        long = engine.tokenizer.encode(" ".join(["word"] * 40))
        events = batch.stream(Request(short, GenerationConfig(60)))
        next(e for e in events if isinstance(e, Delta))  # the short request is decoding
        calls.clear()
        _run(batch, long, GenerationConfig(2))
        list(events)
    finally:
        batch.shutdown()
    long_prefills = [i for i, c in enumerate(calls) if c == "prefill"]
    assert len(long_prefills) >= len(long) // 4
    # between two chunks of the long prompt, the running stream got a decode step
    for a, b in zip(long_prefills, long_prefills[1:], strict=False):
        assert "decode" in calls[a:b]


def test_prefix_cache_reuses_a_finished_conversation(tiny_chat, reference):
    batch = _batch(tiny_chat)
    try:
        prompt = PROMPTS[2]
        first, done = _run(batch, prompt)
        assert done.usage.cached_tokens == 0
        ids = batch.engine.tokenizer.encode(prompt)
        follow = ids + batch.engine.tokenizer.encode(first[0], add_special_tokens=False)[:5]
        again, done = _run(batch, follow)
        assert done.usage.cached_tokens >= len(ids)
        cold = Engine(tiny_chat.mlc_dir, tiny_chat.lib)
        assert again[0] == "".join(cold.generate(follow, GenerationConfig(NEW)))
        assert _run(batch, prompt)[0][0] == reference[prompt]  # a shorter prompt forks mid-sequence
    finally:
        batch.shutdown()


def test_cancel_frees_pages_and_slots(tiny_chat):
    batch = _batch(tiny_chat, max_running=2)
    try:
        _run(batch, PROMPTS[0])  # leaves one sequence in the prefix cache
        idle = batch.snapshot().kv_pages_in_use
        stop = threading.Event()
        events = batch.stream(Request(batch.engine.tokenizer.encode(PROMPTS[1]), GenerationConfig(500)),
                              should_stop=stop.is_set)
        assert isinstance(next(events), Delta)  # running
        stop.set()
        last = list(events)
        assert isinstance(last[-1], Done) and last[-2].finish_reason == "interrupted"
        assert last[-1].usage.completion_tokens < 500
        snap = batch.snapshot()
        assert snap.running == 0 and snap.kv_pages_in_use == idle
    finally:
        batch.shutdown()


def test_a_request_whose_sampling_fails_fails_alone(tiny_chat, reference, monkeypatch):
    """A broken generation (as a grammar error would be) fails its own request; the others finish."""
    from lowbit.runtime import engine as engine_module

    batch = _batch(tiny_chat, max_running=2)
    push = engine_module.Generation.push

    def push_or_fail(self, logits, history, room):
        if self.config.max_new_tokens == 99 and self.sampled == 3:
            raise LowbitError("constrained decoding failed: test")
        return push(self, logits, history, room)

    monkeypatch.setattr(engine_module.Generation, "push", push_or_fail)
    try:
        events: list = []
        failing = threading.Thread(target=lambda: events.extend(batch.stream(
            Request(batch.engine.tokenizer.encode(PROMPTS[1]), GenerationConfig(99)))))
        failing.start()
        assert _concurrently(batch, PROMPTS[:2]) == {p: reference[p] for p in PROMPTS[:2]}
        failing.join(60)
        assert isinstance(events[-1], Failed) and "test" in events[-1].message
        assert batch.snapshot().running == 0
    finally:
        batch.shutdown()


def test_seeded_choices_differ_and_repeat(tiny_chat):
    batch = _batch(tiny_chat)
    config = GenerationConfig(NEW, SamplingParams(temperature=1.0, seed=7))
    try:
        texts, done = _run(batch, PROMPTS[0], config, n=3)
        assert len(set(texts)) == 3
        assert done.usage.completion_tokens == 3 * NEW
        assert _run(batch, PROMPTS[0], config, n=3)[0] == texts
    finally:
        batch.shutdown()


def test_refusals(tiny_chat):
    batch = _batch(tiny_chat, max_running=2, context_window=64, max_total_tokens=128)
    ids = batch.engine.tokenizer.encode(PROMPTS[0])
    try:
        with pytest.raises(Refused, match="context window") as e:
            batch.submit(Request(list(range(64)), GenerationConfig(4)), print)
        assert e.value.param == "prompt"
        with pytest.raises(Refused, match="n must be") as e:
            batch.submit(Request(ids, GenerationConfig(4), n=3), print)
        with pytest.raises(Refused, match="KV pages") as e:
            batch.submit(Request(ids, GenerationConfig(50), n=2), print)
        assert e.value.param == "max_tokens"
    finally:
        batch.shutdown()
    with pytest.raises(LowbitError, match="positive"):
        Engine(tiny_chat.mlc_dir, tiny_chat.lib, prefill_chunk=-1)


def test_queue_full(tiny_chat):
    engine = Engine(tiny_chat.mlc_dir, tiny_chat.lib, max_batch_size=2)
    batch = BatchEngine(engine, max_running=1, max_queue=2)  # not started: nothing leaves the queue
    request = Request(engine.tokenizer.encode(PROMPTS[0]), GenerationConfig(4))
    batch.submit(request, print)
    batch.submit(request, print)
    with pytest.raises(QueueFull):
        batch.submit(request, print)
