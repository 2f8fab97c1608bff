"""The engine on a compiled tiny Llama vs the PyTorch model holding the same (fp32) weights."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.runtime.engine import Engine, GenerationConfig
from lowbit.runtime.sampler import SamplingParams

ATOL = 1e-4  # fp32 logits (|logits| ~ 10): compiled vs PyTorch differ by ~1e-6
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village"]


@pytest.fixture(scope="module")
def engine(tiny_chat) -> Engine:
    return Engine(tiny_chat.mlc_dir, tiny_chat.lib, max_batch_size=3)


@pytest.fixture(scope="module")
def torch_model(tiny_chat):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_chat.hf_dir, dtype=torch.float32).eval()


def _torch_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].numpy()


def _torch_greedy(model, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


def _fresh(engine: Engine, seq: int = 0) -> int:
    if engine.has_sequence(seq):
        engine.remove_sequence(seq)
    return engine.add_sequence(seq)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_prefill_and_decode_logits_match_torch(engine, torch_model, prompt):
    ids = engine.tokenizer.encode(prompt)
    seq = _fresh(engine)
    logits = engine.prefill(seq, ids)
    for _ in range(8):
        np.testing.assert_allclose(logits, _torch_logits(torch_model, ids), atol=ATOL)
        top2 = np.sort(logits)[-2:]
        assert top2[1] - top2[0] > 10 * ATOL  # the greedy pick is decided, not noise
        ids.append(int(np.argmax(logits)))
        logits = engine.decode(seq, ids[-1])


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_generation_equals_torch_greedy(engine, torch_model, prompt):
    ids = engine.tokenizer.encode(prompt)
    text = "".join(engine.generate(ids, GenerationConfig(max_new_tokens=16)))
    ref = _torch_greedy(torch_model, ids, 16)
    assert engine.sequence_tokens(0) == ids + ref[:-1]  # the last sampled token is not fed back
    assert text == engine.tokenizer.decode(ref)
    assert engine.last_stats.decode_tokens == 16 and engine.last_stats.finish_reason == "length"
    assert engine.last_stats.prefill_tok_s > 0 and engine.last_stats.decode_tok_s > 0


def test_chunked_prefill_equals_single_chunk(engine, torch_model):
    ids = engine.tokenizer.encode(" ".join(PROMPTS))
    assert len(ids) > 3 * 6
    chunk, engine.prefill_chunk = engine.prefill_chunk, 6
    try:
        got = engine.prefill(_fresh(engine), ids)
    finally:
        engine.prefill_chunk = chunk
    np.testing.assert_allclose(got, _torch_logits(torch_model, ids), atol=ATOL)


def test_fork_and_remove_sequences(engine, torch_model):
    ids = engine.tokenizer.encode(PROMPTS[0])
    parent = _fresh(engine)
    engine.prefill(parent, ids)
    child = engine.fork_sequence(parent)
    assert engine.sequence_tokens(child) == ids
    a, b = engine.decode(parent, 11), engine.decode(child, 22)
    np.testing.assert_allclose(a, _torch_logits(torch_model, ids + [11]), atol=ATOL)
    np.testing.assert_allclose(b, _torch_logits(torch_model, ids + [22]), atol=ATOL)
    engine.remove_sequence(child)
    with pytest.raises(LowbitError, match="unknown sequence"):
        engine.decode(child, 1)
    np.testing.assert_allclose(engine.decode(parent, 33), _torch_logits(torch_model, ids + [11, 33]), atol=ATOL)


def test_batch_decode_of_forked_sequences(engine, torch_model):
    ids = engine.tokenizer.encode(PROMPTS[2])
    parent = _fresh(engine)
    engine.prefill(parent, ids)
    other = _fresh(engine, 1)
    engine.prefill(other, ids[:3])
    child = engine.fork_sequence(parent, 2)
    logits = engine.decode_batch([parent, other, child], [7, 8, 9])
    for row, prefix, token in zip(logits, (ids, ids[:3], ids), (7, 8, 9), strict=True):
        np.testing.assert_allclose(row, _torch_logits(torch_model, prefix + [token]), atol=ATOL)
    assert engine.sequence_tokens(other) == ids[:3] + [8]
    (single,) = engine.decode_batch([other], [5])  # the batch kernels with one row
    np.testing.assert_allclose(single, _torch_logits(torch_model, ids[:3] + [8, 5]), atol=ATOL)
    engine.remove_sequence(child)
    engine.remove_sequence(other)


def test_generate_reuses_the_cached_prefix(engine, torch_model):
    ids = engine.tokenizer.encode(PROMPTS[1])
    _fresh(engine)
    first = "".join(engine.generate(ids, GenerationConfig(max_new_tokens=4)))
    cached = engine.sequence_tokens(0)
    longer = cached + [int(t) for t in engine.tokenizer.encode(" more")]
    second = "".join(engine.generate(longer, GenerationConfig(max_new_tokens=4)))
    assert engine.last_stats.prompt_tokens == len(longer) - len(cached)
    assert second == engine.tokenizer.decode(_torch_greedy(torch_model, longer, 4))
    diverged = ids[:-1] + [5]  # shorter and different: the cache is rewound first
    third = "".join(engine.generate(diverged, GenerationConfig(max_new_tokens=4)))
    assert engine.last_stats.prompt_tokens == 1  # only the differing token is prefilled
    assert engine.sequence_tokens(0)[: len(diverged)] == diverged
    assert third == engine.tokenizer.decode(_torch_greedy(torch_model, diverged, 4))  # no stale KV entries
    assert first == engine.tokenizer.decode(_torch_greedy(torch_model, ids, 4))


def test_seeded_sampling_is_reproducible(engine):
    ids = engine.tokenizer.encode(PROMPTS[2])
    cfg = GenerationConfig(max_new_tokens=12, sampling=SamplingParams(temperature=2.0, top_p=0.9, seed=7))
    runs = []
    for _ in range(2):
        _fresh(engine)
        runs.append("".join(engine.generate(ids, cfg)))
    _fresh(engine)
    other = "".join(engine.generate(ids, GenerationConfig(12, SamplingParams(temperature=2.0, top_p=0.9, seed=8))))
    assert runs[0] == runs[1] and runs[0] != other


def test_stop_token_and_stop_string(engine, torch_model):
    ids = engine.tokenizer.encode(PROMPTS[0])
    ref = _torch_greedy(torch_model, ids, 6)
    first_new = next(j for j in range(1, 6) if ref[j] not in ref[:j])
    _fresh(engine)
    text = "".join(engine.generate(ids, GenerationConfig(max_new_tokens=6, stop_token_ids=(ref[first_new],))))
    assert text == engine.tokenizer.decode(ref[:first_new]) and engine.last_stats.finish_reason == "stop"
    full = engine.tokenizer.decode(ref)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    _fresh(engine)
    text = "".join(engine.generate(ids, GenerationConfig(max_new_tokens=6, stop_strings=(stop,))))
    assert text == full[: full.index(stop)] and engine.last_stats.finish_reason == "stop"


def test_prompt_longer_than_context_window(engine):
    ids = engine.tokenizer.encode("hello " * (engine.context_window + 5))
    with pytest.raises(LowbitError, match="context window"):
        next(engine.generate(ids, GenerationConfig()))


def test_cli_run_prints_torch_greedy_text(tiny_chat, torch_model, engine):
    ids = engine.tokenizer.encode(PROMPTS[0])
    args = [str(tiny_chat.mlc_dir), "--model-lib", str(tiny_chat.lib), "--prompt", PROMPTS[0],
            "--max-new-tokens", "10", "--temperature", "0"]
    result = CliRunner().invoke(main, ["run", *args])
    assert result.exit_code == 0, result.output
    assert result.stdout == engine.tokenizer.decode(_torch_greedy(torch_model, ids, 10)) + "\n"
    assert "tok/s" in result.stderr


def _copy(tiny_chat, tmp_path):
    return shutil.copytree(tiny_chat.mlc_dir, tmp_path / "mlc")


def _cli_error(*args) -> str:
    result = CliRunner().invoke(main, ["run", *map(str, args), "--prompt", "hi", "--max-new-tokens", "2"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_bad_inputs_are_one_line_errors(tiny_chat, tmp_path):
    lib = tiny_chat.lib
    assert "does not exist" in _cli_error(tiny_chat.mlc_dir, "--model-lib", tmp_path / "none.so")
    (tmp_path / "junk.so").write_bytes(b"not a library")
    assert "cannot load model library" in _cli_error(tiny_chat.mlc_dir, "--model-lib", tmp_path / "junk.so")
    long = "word " * 2000
    result = CliRunner().invoke(main, ["run", str(tiny_chat.mlc_dir), "--model-lib", str(lib), "--prompt", long])
    assert result.exit_code == 1 and "context window" in result.stderr and len(result.stderr.strip().splitlines()) == 1

    mlc = _copy(tiny_chat, tmp_path)
    next(mlc.glob("params_shard_*.bin")).unlink()
    assert "missing weight shard" in _cli_error(mlc, "--model-lib", lib)


@pytest.mark.parametrize("change", ["quantization", "renamed", "shape"])
def test_library_for_another_folder_is_refused(tiny_chat, tmp_path, change):
    mlc = _copy(tiny_chat, tmp_path)
    if change == "quantization":
        chat = json.loads((mlc / "mlc-chat-config.json").read_text())
        chat["quantization"] = "q4f16_1"
        (mlc / "mlc-chat-config.json").write_text(json.dumps(chat))
    else:
        index = json.loads((mlc / "tensor-cache.json").read_text())
        rec = index["records"][0]["records"][-1]
        if change == "renamed":
            rec["name"] += ".other"
        else:
            rec["shape"] = [rec["shape"][0] * 2, rec["shape"][1] // 2]  # same bytes, another shape
        (mlc / "tensor-cache.json").write_text(json.dumps(index))
    line = _cli_error(mlc, "--model-lib", tiny_chat.lib)
    assert "model library tiny.so" in line


def test_long_prefill_reports_progress(tiny_chat, capsys):
    """A prompt longer than one prefill chunk advances ``run``'s stderr bar chunk by chunk to the
    whole prompt; text matches the plain engine's; a one-chunk prompt shows no bar."""
    from lowbit.runtime.chat import _prefill_bar

    small = Engine(tiny_chat.mlc_dir, tiny_chat.lib, prefill_chunk=4)
    ids = small.tokenizer.encode(PROMPTS[2])
    config = GenerationConfig(max_new_tokens=4)
    counts: list[int] = []

    def progress(total: int):
        assert total == len(ids)
        return counts.append

    text = "".join(small.generate(ids, config, prefill_progress=progress))
    assert counts == [4] * (len(ids) // 4) + ([len(ids) % 4] if len(ids) % 4 else [])
    plain = Engine(tiny_chat.mlc_dir, tiny_chat.lib)
    assert text == "".join(plain.generate(ids, config))
    capsys.readouterr()
    with _prefill_bar(small.prefill_chunk) as start:
        assert start(4) is None
        advance = start(len(ids))
        for n in counts:
            advance(n)
    err = capsys.readouterr().err  # each chunk's count shown; the finished bar is cleared
    done = np.cumsum(counts)[:-1]
    assert "prefill" in err and all(f"{n}/{len(ids)}" in err for n in done)
