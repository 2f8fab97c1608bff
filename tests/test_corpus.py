"""The corpus split: fixed, disjoint, deterministic; user corpora; windows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lowbit.corpus import (
    SPLITS,
    calibration_windows,
    eval_windows,
    file_documents,
    split_documents,
    wiki_documents,
)
from lowbit.errors import LowbitError


def test_wiki_split_is_disjoint_ordered_and_complete():
    docs = wiki_documents()
    assert len(docs) == 10033
    assert docs == sorted(docs, key=lambda d: d.split(" = ")[1])  # sorted by title
    parts = {s: split_documents(docs, s) for s in SPLITS}
    assert [len(parts[s]) for s in SPLITS] == [8027, 1003, 1003]
    assert parts["calibration"] + parts["validation"] + parts["test"] == docs
    seen = [set(parts[s]) for s in SPLITS]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert split_documents(wiki_documents(), "test") == parts["test"]  # deterministic
    assert docs[0].startswith(" = ") and " = \n\n" in docs[0]


def test_user_corpora(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("a b\n\nc d\n\n\n\ne f\n")
    assert file_documents(txt) == ["a b", "c d", "e f"]
    jl = tmp_path / "c.jsonl"
    jl.write_text(json.dumps({"text": "x"}) + "\n" + json.dumps({"title": "T", "extract": " y "}) + "\n")
    assert file_documents(jl) == ["x", " = T = \n\ny"]
    jl.write_text("{not json}\n")
    with pytest.raises(LowbitError, match="not valid JSON"):
        file_documents(jl)
    (tmp_path / "c.csv").write_text("a,b\n")
    with pytest.raises(LowbitError, match="must be .txt or .jsonl"):
        file_documents(tmp_path / "c.csv")
    with pytest.raises(LowbitError, match="not found"):
        file_documents(tmp_path / "missing.txt")
    with pytest.raises(LowbitError, match="at least 10"):
        split_documents(["a", "b"], "test")


def test_windows():
    ids = np.arange(1000)
    w = eval_windows(ids, 100, 3)
    assert w.shape == (3, 100) and w[1, 0] == 100
    with pytest.raises(LowbitError):
        eval_windows(ids, 100, 11)
    a, b = calibration_windows(ids, 64, 8, seed=1), calibration_windows(ids, 64, 8, seed=1)
    assert np.array_equal(a, b) and a.shape == (8, 64)
    assert np.all(np.diff(a, axis=1) == 1)  # contiguous slices
    assert not np.array_equal(a, calibration_windows(ids, 64, 8, seed=2))
