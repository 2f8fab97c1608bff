"""The native (C++) tokenizer of apps/native gives HF ``tokenizers``' ids and text.

Writes fixtures with apps/native/tests/make_tokenizer_fixture.py and runs the C++
``tokenizer_test`` (the cached build of conftest.py) on them: the
bundled model's tokenizer through ctest, and small BPE tokenizers trained here for the
components the bundled one lacks (Qwen2's NFC and Split regex, Digits, String splits, split
behaviors, added-token options, unk and byte fallback, a BOS template). The pre-tokenizer
patterns of the supported models have built-in matchers, checked against PCRE2 (ctest
``split_pattern``) and, without PCRE2, against HF again.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from native_build import NATIVE, run, run_ctest, write_fixture

MAKE_FIXTURE = NATIVE / "tests" / "make_tokenizer_fixture.py"

QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# ByteLevel's own
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VARIANT_DOCS = 300  # corpus documents per trained-tokenizer fixture (plus the edge cases)


def _write_fixture(tokenizer_json: Path, out: Path, docs: int) -> str:
    result = run([sys.executable, MAKE_FIXTURE, tokenizer_json, out, "--docs", str(docs)])
    assert result.returncode == 0, result.stderr
    return result.stdout


def _check(build: Path, tokenizer_json: Path, fixture: Path) -> str:
    result = run([build / "tokenizer_test", tokenizer_json, fixture], timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr
    assert result.stdout.strip().splitlines()[-1].endswith(" 0 failed")
    return result.stdout


def test_bundled_tokenizer_via_ctest(native_build, bundled_dir, tmp_path):
    """2,000 Wikipedia documents and the edge cases, with SmolLM2's tokenizer, through ctest."""
    tokenizer_json = Path(bundled_dir) / "tokenizer.json"
    fixture = native_build / "fixtures" / "tokenizer_cases.jsonl"
    fixture.parent.mkdir(exist_ok=True)
    hf_speed = _write_fixture(tokenizer_json, fixture, 2000)
    write_fixture(native_build, "tokenizer_json", str(tokenizer_json))
    write_fixture(native_build, "tokenizer_cases", str(fixture))
    out = run_ctest(native_build, "tokenizer")
    rows = sum(1 for _ in fixture.open())
    assert f"tokenizer: {rows} passed, 0 failed" in out and rows > 2000
    print(hf_speed, out, sep="\n")


def test_builtin_split_patterns_match_pcre2(native_build):
    """The built-in GPT-2, Llama-3, Qwen2 and Digits matchers split 20,000 generated documents as
    PCRE2 does, on character tables that agree with PCRE2's Unicode; prints their speeds."""
    out = run_ctest(native_build, "split_pattern")
    assert "split_pattern: 5 passed, 0 failed" in out
    print(*(line for line in out.splitlines() if "timing" in line or "classes:" in line), sep="\n")


# -- small BPE tokenizers trained here, one per component the bundled tokenizer does not use
def _train(pre_tokenizer_json: dict, **trainer_kw) -> dict:
    """A 1,000-token BPE trained on calibration documents with the given pre-tokenizer, as JSON."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from lowbit.corpus import split_documents, wiki_documents

    spec = json.loads(Tokenizer(models.BPE()).to_str())
    spec["pre_tokenizer"] = pre_tokenizer_json
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    tokenizer.decoder = decoders.ByteLevel()
    kw = dict(
        vocab_size=1000,
        special_tokens=SPECIALS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    kw.update(trainer_kw)
    tokenizer.train_from_iterator(
        split_documents(wiki_documents(), "calibration")[:1000], trainers.BpeTrainer(**kw)
    )
    return json.loads(tokenizer.to_str())


def _byte_level(add_prefix_space: bool = False, use_regex: bool = False) -> dict:
    return {
        "type": "ByteLevel",
        "add_prefix_space": add_prefix_space,
        "trim_offsets": True,
        "use_regex": use_regex,
    }


def _split(pattern: dict, behavior: str, invert: bool = False) -> dict:
    return {"type": "Split", "pattern": pattern, "behavior": behavior, "invert": invert}


def _sequence(*steps: dict) -> dict:
    return {"type": "Sequence", "pretokenizers": list(steps)}


def _qwen2() -> dict:
    """Qwen2's layout: NFC, the Split regex, ByteLevel without its regex."""
    spec = _train(_sequence(_split({"Regex": QWEN2_PATTERN}, "Isolated"), _byte_level()))
    spec["normalizer"] = {"type": "NFC"}
    spec["post_processor"] = _byte_level()
    return spec


def _llama3_bos_template() -> dict:
    """Llama-3's pre-tokenizer, a BOS added by TemplateProcessing, merges as "a b" strings."""
    spec = _train(_sequence(_split({"Regex": LLAMA3_PATTERN}, "Isolated"), _byte_level()))
    bos = {"id": 1, "content": "<|im_start|>"}
    spec["post_processor"] = {
        "type": "Sequence",
        "processors": [
            _byte_level(),
            {
                "type": "TemplateProcessing",
                "single": [
                    {"SpecialToken": {"id": bos["content"], "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}},
                ],
                "pair": [
                    {"Sequence": {"id": "A", "type_id": 0}},
                    {"Sequence": {"id": "B", "type_id": 1}},
                ],
                "special_tokens": {
                    bos["content"]: {
                        "id": bos["content"],
                        "ids": [bos["id"]],
                        "tokens": [bos["content"]],
                    }
                },
            },
        ],
    }
    spec["model"]["merges"] = [" ".join(pair) for pair in spec["model"]["merges"]]
    return spec


def _digits_and_strings() -> dict:
    """Digits, String patterns, MergedWithNext, ByteLevel with its own regex and a prefix space."""
    return _train(
        _sequence(
            {"type": "Digits", "individual_digits": True},
            _split({"String": ", "}, "MergedWithNext"),
            _byte_level(add_prefix_space=True, use_regex=True),
        )
    )


def _split_behaviors() -> dict:
    """Removed, MergedWithPrevious, Contiguous with invert, and Digits without individual digits."""
    return _train(
        _sequence(
            _split({"Regex": r"[,.;:!?]"}, "MergedWithPrevious"),
            _split({"Regex": r"\p{Lu}"}, "Contiguous", invert=True),
            _split({"String": "  "}, "Removed"),
            {"type": "Digits", "individual_digits": False},
            _byte_level(use_regex=True),
        )
    )


def _added_token_options() -> dict:
    """Added tokens with lstrip/rstrip, single_word and normalized; ignore_merges."""
    from tokenizers import Tokenizer

    spec = _qwen2()
    vocab = spec["model"]["vocab"]
    # A word in the vocabulary that the merges cannot build: ignore_merges must emit it whole.
    ((word, _),) = Tokenizer.from_str(json.dumps(spec)).pre_tokenizer.pre_tokenize_str(" naïve")
    assert word not in vocab
    vocab[word] = max(vocab.values()) + 1
    next_id = vocab[word] + 1
    extra = [
        {
            "content": "<mask>",
            "lstrip": True,
            "rstrip": True,
            "single_word": False,
            "normalized": False,
            "special": True,
        },
        {
            "content": "hello world",
            "lstrip": False,
            "rstrip": False,
            "single_word": True,
            "normalized": True,
            "special": False,
        },
        {
            "content": "the",
            "lstrip": False,
            "rstrip": True,
            "single_word": True,
            "normalized": True,
            "special": False,
        },
        {
            "content": "<|im",
            "lstrip": False,
            "rstrip": False,
            "single_word": False,
            "normalized": False,
            "special": False,
        },
    ]
    for i, token in enumerate(extra):
        spec["added_tokens"].append({"id": next_id + i, **token})
    spec["model"]["ignore_merges"] = True
    return spec


def _character_level(unk: bool, fuse_unk: bool, byte_fallback: bool) -> dict:
    """No byte-level alphabet, so rare characters are unknown: an unk token (fused or not),
    <0xXX> byte tokens, or (neither) dropped."""
    spec = _train(
        _split({"Regex": r"\s+"}, "Removed"),
        initial_alphabet=[],
        limit_alphabet=60,
        special_tokens=[*SPECIALS, "[UNK]"],
    )
    if byte_fallback:
        vocab = spec["model"]["vocab"]
        next_id = max(vocab.values()) + 1
        for b in range(
            0x80, 0x100
        ):  # non-ASCII bytes only, so that rare ASCII still meets the unk token
            vocab[f"<0x{b:02X}>"] = next_id + b - 0x80
    spec["model"].update(
        unk_token="[UNK]" if unk else None, fuse_unk=fuse_unk, byte_fallback=byte_fallback
    )
    return spec


VARIANTS: dict[str, Callable[[], dict]] = {
    "qwen2": _qwen2,
    "llama3_bos_template": _llama3_bos_template,
    "digits_and_strings": _digits_and_strings,
    "split_behaviors": _split_behaviors,
    "added_token_options": _added_token_options,
    "unk_fused_and_byte_fallback": lambda: _character_level(
        unk=True, fuse_unk=True, byte_fallback=True
    ),
    "unk_unfused": lambda: _character_level(unk=True, fuse_unk=False, byte_fallback=False),
    "unknown_dropped": lambda: _character_level(unk=False, fuse_unk=False, byte_fallback=False),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_trained_tokenizer_variant(native_build, tmp_path, variant):
    tokenizer_json = tmp_path / "tokenizer.json"
    tokenizer_json.write_text(json.dumps(VARIANTS[variant]()))
    fixture = tmp_path / "fixture.jsonl"
    _write_fixture(tokenizer_json, fixture, VARIANT_DOCS)
    _check(native_build, tokenizer_json, fixture)


@pytest.mark.parametrize("variant", ["bundled", "qwen2"])
def test_without_pcre2(native_build_without_pcre2, bundled_dir, tmp_path, variant):
    """Built without PCRE2, the tokenizer still gives HF's ids for the bundled tokenizer (ByteLevel's
    GPT-2 pattern) and a Qwen2-pattern one."""
    build = native_build_without_pcre2
    linked = run(["ldd", build / "tokenizer_test"])
    assert linked.returncode == 0 and "pcre2" not in linked.stdout, linked.stdout
    if variant == "bundled":
        tokenizer_json = Path(bundled_dir) / "tokenizer.json"
    else:
        tokenizer_json = tmp_path / "tokenizer.json"
        tokenizer_json.write_text(json.dumps(_qwen2()))
    fixture = tmp_path / "fixture.jsonl"
    _write_fixture(tokenizer_json, fixture, VARIANT_DOCS)
    _check(build, tokenizer_json, fixture)


def test_builtin_split_patterns_match_hf(native_build_without_pcre2, tmp_path):
    """Without PCRE2, the built-in matchers cut text into HF's own pieces: the fixture's edge cases
    and Wikipedia documents, and random texts of code points from every plane (HF's Unicode is
    newer than PCRE2's, so this is the check for the characters PCRE2 cannot judge)."""
    import importlib.util

    from tokenizers import Regex, pre_tokenizers

    spec = importlib.util.spec_from_file_location("make_tokenizer_fixture", MAKE_FIXTURE)
    fixture_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixture_module)
    texts = (
        fixture_module.EDGE_CASES
        + fixture_module.random_texts(2000)
        + fixture_module.corpus_texts(VARIANT_DOCS)
    )
    fixture = tmp_path / "splits.jsonl"
    with fixture.open("w", encoding="utf-8") as f:
        for pattern in (GPT2_PATTERN, LLAMA3_PATTERN, QWEN2_PATTERN, r"\p{N}"):
            split = pre_tokenizers.Split(Regex(pattern), "isolated")
            for text in texts:
                pieces = [piece for piece, _ in split.pre_tokenize_str(text)]
                row = {"pattern": pattern, "text": text, "pieces": pieces}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    result = run([native_build_without_pcre2 / "tokenizer_test", "--splits", fixture], timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr
    assert f"splits: {4 * len(texts)} passed, 0 failed" in result.stdout


def _minimal_spec(**changes) -> dict:
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": _byte_level(),
        "post_processor": None,
        "decoder": _byte_level(),
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]},
    }
    spec.update(changes)
    return spec


def test_other_pattern_without_pcre2_is_one_line_error(native_build_without_pcre2, tmp_path):
    """A Split regex that has no built-in matcher needs PCRE2: the load fails naming it."""
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(_minimal_spec(pre_tokenizer=_split({"Regex": r"\s+"}, "Removed"))))
    result = run([native_build_without_pcre2 / "tokenizer_test", "--load", path])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and '"\\\\s+"' in lines[0] and "no PCRE2" in lines[0], result.stderr
    print(lines[0])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"normalizer": {"type": "NFKC"}}, "normalizer NFKC is not supported"),
        (
            {
                "normalizer": {
                    "type": "Sequence",
                    "normalizers": [{"type": "NFC"}, {"type": "Lowercase"}],
                }
            },
            "normalizer Lowercase is not supported",
        ),
        ({"decoder": None}, "decoder null is not supported"),
        (
            {
                "truncation": {
                    "direction": "Right",
                    "max_length": 8,
                    "strategy": "LongestFirst",
                    "stride": 0,
                }
            },
            "truncation is not supported",
        ),
        (
            {
                "pre_tokenizer": {
                    "type": "Metaspace",
                    "replacement": "_",
                    "prepend_scheme": "always",
                    "split": True,
                }
            },
            "pre_tokenizer Metaspace is not supported",
        ),
        (
            {
                "post_processor": {
                    "type": "BertProcessing",
                    "sep": ["[SEP]", 1],
                    "cls": ["[CLS]", 0],
                }
            },
            "post_processor BertProcessing is not supported",
        ),
    ],
)
def test_unsupported_component_is_one_line_error(native_build, tmp_path, change, message):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(_minimal_spec(**change)))
    result = run([native_build / "tokenizer_test", "--load", path])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_model_other_than_bpe_is_refused(native_build, tmp_path):
    spec = {
        "normalizer": None,
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": _byte_level(),
        "added_tokens": [],
        "model": {"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "a"},
    }
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    result = run([native_build / "tokenizer_test", "--load", path])
    assert result.returncode == 2 and "model WordLevel is not supported" in result.stderr
