"""The log-likelihood protocol: metrics on a hand-made task, encoding, shared-context scoring."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.evaluate.harness import (
    TorchScorer,
    encode_pair,
    example_metrics,
    run_task,
    score_example,
)
from lowbit.evaluate.task_data import TaskData
from lowbit.evaluate.tasks import Example, Task, multiple_choice, winogrande
from lowbit.packages import PackagedFile


class CharTokenizer:
    """One token per character, so token splits are exactly string splits."""

    bos_token_id = None
    eos_token_id = 0

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


def decode(ids: list[int]) -> str:
    return "".join(chr(i) for i in ids)


class TableScorer:
    """Log-likelihoods from a table keyed by (context, continuation) text; counts forwards."""

    def __init__(self, table: dict[tuple[str, str], float]):
        self.table = table
        self.calls: list[str] = []

    def score_groups(self, groups):
        out = []
        for context, continuations in groups:
            self.calls.append(decode(context))
            out.append([self.table[(decode(context), decode(c))] for c in continuations])
        return out


def _hand_task() -> Task:
    def build(doc: dict) -> Example:
        return multiple_choice(f"Q: {doc['q']}\nA:", doc["choices"], doc["gold"])

    data = TaskData(PackagedFile("none", "0", "none", "test"), "test", "test", lambda p: [])
    return Task("hand", ("acc", "acc_norm"), build, data)


HAND_DOCS = [
    # acc picks " a" (−2 > −3): wrong; acc_norm: −2/1 < −3/4 → "bbbb": right.
    {"q": "one", "choices": ["a", "bbbb"], "gold": 1, "lls": [-2.0, -3.0]},
    # acc picks " cc": right; acc_norm: −1/2 > −1.5/1 → "cc": right.
    {"q": "two", "choices": ["cc", "d"], "gold": 0, "lls": [-1.0, -1.5]},
    # acc picks " ff": right; acc_norm: −6/3 > −5/2 → "eee": wrong.
    {"q": "three", "choices": ["eee", "ff"], "gold": 1, "lls": [-6.0, -5.0]},
]


def test_hand_made_task_accuracy_computed_by_hand():
    table = {
        (f"Q: {d['q']}\nA:", f" {c}"): ll
        for d in HAND_DOCS
        for c, ll in zip(d["choices"], d["lls"], strict=True)
    }
    scorer = TableScorer(table)
    result = run_task(scorer, CharTokenizer(), _hand_task(), HAND_DOCS, progress=False)
    # per document (acc, acc_norm): (0, 1), (1, 1), (1, 0)
    assert result.n == 3
    assert result.acc == pytest.approx(2 / 3)
    assert result.acc_norm == pytest.approx(2 / 3)
    # harness mean_stderr: sample std of [0, 1, 1] = sqrt(1/3), over sqrt(3) → 1/3
    assert result.acc_stderr == pytest.approx(1 / 3)
    # each document's choices share one context: one forward per document
    assert scorer.calls == ["Q: one\nA:", "Q: two\nA:", "Q: three\nA:"]


def test_acc_norm_divides_by_choice_characters_not_continuation():
    ex = multiple_choice("ctx", ["ab", "c"], 0)
    # by choice length −3/2 = −1.5 > −1.6/1 picks "ab"; by continuation length (" ab", " c")
    # −3/3 = −1 < −1.6/2 = −0.8 would pick "c".
    assert example_metrics(ex, [-3.0, -1.6]) == {"acc": 0.0, "acc_norm": 1.0}
    assert example_metrics(ex, [-3.3, -1.6]) == {"acc": 0.0, "acc_norm": 0.0}  # −1.65 < −1.6


def test_encode_pair_moves_trailing_space_to_continuation():
    ctx, cont = encode_pair(CharTokenizer(), "Answer: ", "yes")
    assert decode(ctx) == "Answer:" and decode(cont) == " yes"


def test_winogrande_scores_each_context_once():
    doc = {"sentence": "Tom hit Bob so _ fell.", "option1": "Tom", "option2": "Bob", "answer": "2"}
    ex = winogrande(doc)
    scorer = TableScorer({("Tom hit Bob so Tom", " fell."): -4.0,
                          ("Tom hit Bob so Bob", " fell."): -3.0})
    assert score_example(scorer, CharTokenizer(), ex) == [-4.0, -3.0]
    assert scorer.calls == ["Tom hit Bob so Tom", "Tom hit Bob so Bob"]
    assert example_metrics(ex, [-4.0, -3.0])["acc"] == 1.0


def _reference_lls(model, context: list[int], continuations: list[list[int]]) -> list[float]:
    """Each request on its own: one full forward of context + continuation (the harness way)."""
    out = []
    for cont in continuations:
        ids = torch.tensor([context + cont])
        logp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
        pos = torch.arange(len(context) - 1, len(context) + len(cont) - 1)
        out.append(logp[pos, torch.tensor(cont)].sum().item())
    return out


@pytest.mark.parametrize("max_length", [256, 12])
def test_shared_context_scoring_equals_full_forwards(tiny_llama_dir, max_length):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    context = torch.randint(1, 512, (9,), generator=g).tolist()
    conts = [torch.randint(1, 512, (n,), generator=g).tolist() for n in (1, 4, 2, 5)]
    got = TorchScorer(model, max_length).score(context, conts)
    # harness truncation: keep the last max_length + 1 tokens (longest continuation decides)
    kept = context[max(0, len(context) + 5 - max_length - 1) :]
    with torch.inference_mode():
        want = _reference_lls(model, kept, conts)
    assert got == pytest.approx(want, abs=1e-4)
    assert all(math.isfinite(x) and x < 0 for x in got)


def test_batched_groups_equal_full_forwards(tiny_llama_dir):
    """Documents batched together (left-padded contexts of different lengths, continuations of
    different lengths and counts) score as each request's own full forward; transformers has no
    deprecation to print into the progress bar."""
    import logging

    from transformers import AutoModelForCausalLM

    logging.Logger.warning_once.cache_clear()  # transformers warns once per process
    warnings: list[logging.LogRecord] = []
    catcher = logging.Handler(logging.WARNING)
    catcher.emit = warnings.append  # transformers' logger does not propagate to pytest's
    logging.getLogger("transformers").addHandler(catcher)

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(1)

    def rand(n: int) -> list[int]:
        return torch.randint(1, 512, (n,), generator=g).tolist()

    groups = [(rand(3), [rand(2), rand(1)]), (rand(11), [rand(4), rand(3), rand(6)]),
              (rand(7), [rand(1)]), (rand(1), [rand(5), rand(2)])]
    got = TorchScorer(model, 256).score_groups(groups)
    with torch.inference_mode():
        want = [_reference_lls(model, ctx, conts) for ctx, conts in groups]
    for got_g, want_g in zip(got, want, strict=True):
        assert got_g == pytest.approx(want_g, abs=1e-4)
    logging.getLogger("transformers").removeHandler(catcher)
    assert not [w.getMessage() for w in warnings]
