"""Write the native tokenizer's test fixture: HF ``tokenizers`` ids and decoded text per input.

Usage: python make_tokenizer_fixture.py TOKENIZER_JSON OUT_JSONL [--docs N]

Rows are ``{"text", "ids", "decoded"}``: ``ids`` from ``encode(text)`` (special tokens added),
``decoded`` from ``decode(ids)`` (special tokens skipped). The inputs are N documents of the
bundled Wikipedia corpus (the test split, then the validation split if N needs more),
hand-written edge cases and random texts (seeded) of code points from every plane, for the
pre-tokenizer's character classes. Last come rows without ``text``: random id sequences (seeded), whose
decoding is mostly invalid UTF-8, for the U+FFFD replacement and the stream decoder.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

# Edge cases the Wikipedia text rarely has: scripts, emoji sequences, combining marks, digit and
# whitespace runs, and the special tokens of ChatML-style models.
EDGE_CASES: list[str] = [
    "",
    " ",
    "   ",
    "\n",
    "\n\n\n",
    "\t",
    "a\tb\t\tc",
    "trailing spaces   ",
    "   leading spaces",
    "line one\nline two\r\nline three\rend",
    "mixed \t \n \r\n whitespace \u00a0 no-break \u3000 ideographic \u2028 line sep",
    "Café naïve résumé façade Æsir Ångström",
    "Ünïcödé çåsè: ß ẞ ǅ ǈ ﬁ ﬀ",
    "e\u0301 a\u0300 o\u0308 n\u0303 combining: \u0301\u0302\u0303",
    "decomposed: Tie\u0302\u0301ng Vie\u0323\u0302t, A\u030a vs \u00c5, \u212b, d\u0307\u0323 vs d\u0323\u0307",
    "hangul jamo: \u1100\u1161\u11a8 \uac00\u11a8 \u1112\u1161\u11ab\u1100\u1173\u11af",
    "marks out of order: a\u0301\u0316 a\u0316\u0301 q\u0307\u0323\u031b \u0344 \u0f73 \u0958",
    "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034dalgo",
    "中文分词测试：我爱北京天安门。",
    "日本語のテキスト、カタカナとひらがな。",
    "한국어 텍스트입니다.",
    "العربية: مرحبا بالعالم",
    "עברית: שלום עולם",
    "Ελληνικά: Γειά σου Κόσμε",
    "Русский текст: Привет, мир!",
    "हिन्दी: नमस्ते दुनिया",
    "ไทย: สวัสดีชาวโลก",
    "emoji: 😀 😃 👍🏽 🇫🇷 🏳️‍🌈",
    "family: 👨‍👩‍👧‍👦 and 👩🏾‍💻 and 🧑‍🤝‍🧑",
    "keycaps 1️⃣ #️⃣ and variation ☺︎ ☺️",
    "math: ∑∫√∞ ≤ ≥ ≠ ± × ÷ 𝔸𝔹ℂ 𝒳",
    "0123456789",
    "3.14159 2,718 1e-10 -42 +7 1/2 ½ ¾ ²³ ١٢٣ ४५६",
    "12345678901234567890 digits in a row",
    "phone 555-0123, year 2024, version v1.2.3",
    "code: def f(x):\n    return x ** 2  # square\n",
    "{\"key\": [1, 2, 3], 'q': None}",
    "URL https://example.com/path?a=1&b=2#frag",
    "It's I'm we're they've he'd she'll IT'S I'M WE'RE",
    "punctuation!!! ??? ... --- *** ### @@@",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text<|endoftext|>",
    "<|endoftext|>",
    " <|endoftext|> ",
    "<|im_start|><|im_end|><|endoftext|>",
    "<|im_start",
    "a <mask> b  <mask>\t\nc<mask>d",
    "hello world, hello worlds, sayhello world; hello world",
    "the theme of the other theory: the  end, the",
    "<|im_end|x",
    "a" * 300,
    " " * 300,
    "ab" * 200 + " " + "\n" * 50,
    "\u0000 nul \u0001 \u007f del \u0085 nel",
    "\ufeffbyte order mark",
    "zero\u200bwidth\u200cjoiner\u200dtest\u2060",
    "private use \ue000 \U000f0000 and noncharacter \ufdd0",
    # letters and digits newer than Unicode 14 (Python's and PCRE2's here; HF's Unicode is newer)
    "Kawi \U00011f04\U00011f05 \U00011f50\U00011f51, Garay !\U00010d4a\U00010d4b, \u1c89\u1c8a, \U00031350 x\U00011f50",
]


# What random texts are made of: random code points (surrogates aside, unassigned and private use
# included) and pieces that meet the pre-tokenizer patterns' alternatives.
RANDOM_PIECES = [
    " ",
    "  ",
    "\n",
    "\r\n",
    "\t",
    "\u00a0",
    "\u3000",
    "\u2028",
    "'s",
    "'S",
    "'re",
    "'LL",
    "'\u017f",
    "12345",
    "\u00bd",
    "abc",
    "Word",
    "?!",
    ".\n",
]


def random_texts(n_texts: int = 200) -> list[str]:
    rng = random.Random(1)

    def code_point() -> str:
        top = rng.choice([0x80, 0x800, 0x10000, 0x110000])
        c = rng.randrange(top)
        return chr(c) if not 0xD800 <= c <= 0xDFFF else "\ufffd"

    return [
        "".join(
            rng.choice(RANDOM_PIECES) if rng.random() < 0.3 else code_point()
            for _ in range(rng.randint(1, 40))
        )
        for _ in range(n_texts)
    ]


def corpus_texts(n_docs: int) -> list[str]:
    """The first ``n_docs`` documents of the test split, continued with the validation split."""
    from lowbit.corpus import split_documents, wiki_documents

    docs = wiki_documents()
    pool = split_documents(docs, "test") + split_documents(docs, "validation")
    if len(pool) < n_docs:
        pool += split_documents(docs, "calibration")
    if len(pool) < n_docs:
        raise SystemExit(f"the corpus has only {len(pool)} documents; asked for {n_docs}")
    return pool[:n_docs]


def random_id_rows(tokenizer, n_rows: int = 300) -> list[list[int]]:
    """Id sequences of 1 to 40 random ids (fixed seed), special tokens included. The ids come in
    equal parts from all tokens, tokens with non-ASCII characters and one-character tokens (single
    bytes in a byte-level vocabulary), so the bytes often make broken UTF-8."""
    rng = random.Random(0)
    every = list(range(tokenizer.get_vocab_size()))
    tokens = {i: tokenizer.id_to_token(i) or "" for i in every}
    non_ascii = [i for i in every if any(ord(c) >= 0x80 for c in tokens[i])] or every
    single = [i for i in every if len(tokens[i]) == 1] or every
    pools = [every, non_ascii, single]
    return [
        [rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 40))] for _ in range(n_rows)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tokenizer_json", type=Path)
    parser.add_argument("out_jsonl", type=Path)
    parser.add_argument(
        "--docs", type=int, default=2000, help="corpus documents to include (default 2000)"
    )
    args = parser.parse_args()

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(args.tokenizer_json))
    texts = corpus_texts(args.docs) + EDGE_CASES + random_texts()

    start = time.perf_counter()
    encoded = [tokenizer.encode(text).ids for text in texts]
    seconds = time.perf_counter() - start
    n_tokens = sum(len(ids) for ids in encoded)

    args.out_jsonl.parent.mkdir(parents=True, exist_ok=True)
    with args.out_jsonl.open("w", encoding="utf-8") as f:
        for text, ids in zip(texts, encoded, strict=True):
            row = {"text": text, "ids": ids, "decoded": tokenizer.decode(ids)}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        for ids in random_id_rows(tokenizer):
            f.write(
                json.dumps({"ids": ids, "decoded": tokenizer.decode(ids)}, ensure_ascii=False)
                + "\n"
            )
    print(
        f"{args.out_jsonl}: {len(texts)} rows; HF encode {n_tokens} tokens in {seconds:.3f} s, "
        f"{n_tokens / max(seconds, 1e-9):.0f} tokens/s (one text at a time)"
    )


if __name__ == "__main__":
    main()
