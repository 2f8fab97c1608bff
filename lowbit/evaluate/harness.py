"""The LM-evaluation-harness log-likelihood protocol, scored with shared contexts.

For each (context, continuation) pair the harness moves the context's trailing whitespace to
the continuation, encodes ``context + continuation`` and ``context`` without extra special
tokens beyond the tokenizer's default, and takes the continuation tokens as the tail of the
whole encoding past the context's length. The score is the summed log-probability of those
tokens given ``context_ids``. ``acc`` takes the argmax of the scores, ``acc_norm`` the argmax
of the scores divided by each choice string's length in characters (``len(choice)``, as
lm-eval 0.4.13 ``ConfigurableTask.process_results`` computes it).

Requests of one document that share a context are scored together: the context runs once,
its KV cache is repeated for the continuations, which run as one right-padded batch (causal
attention makes the padding invisible to the positions that are read).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from lowbit.evaluate.tasks import Example, Task


class Scorer(Protocol):
    def score(self, context: list[int], continuations: Sequence[list[int]]) -> list[float]:
        """Summed log-probability of each continuation's tokens after ``context``."""
        ...


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval ``TemplateLM._encode_pair`` for a causal model (context must be non-empty)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids) :]


def encode_request(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval ``loglikelihood``: an empty context conditions on the prefix token (BOS or EOS)."""
    if context:
        return encode_pair(tokenizer, context, continuation)
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    cont = tokenizer.encode(continuation)
    return ([prefix], cont) if cont[:1] != [prefix] else (cont[:1], cont[1:])


class TorchScorer:
    """Scores with a PyTorch causal LM (HF or fused fake-quant), one forward per context."""

    def __init__(self, model: torch.nn.Module, max_length: int):
        self.model = model
        self.max_length = max_length
        # transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name is deprecated)
        params = inspect.signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"

    @torch.inference_mode()
    def score(self, context: list[int], continuations: Sequence[list[int]]) -> list[float]:
        longest = max(len(c) for c in continuations)
        # lm-eval keeps the last max_length + 1 tokens of context + continuation.
        context = context[max(0, len(context) + longest - self.max_length - 1) :]
        out = self.model(torch.tensor([context]), use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        scores = [first[c[0]].item() for c in continuations]
        if longest == 1:
            return scores
        cache = out.past_key_values
        cache.batch_repeat_interleave(len(continuations))
        inputs = torch.tensor([c[:-1] + [0] * (longest - len(c)) for c in continuations])
        logp = torch.log_softmax(self.model(inputs, **{self.cache_kw: cache}).logits.float(), -1)
        for i, c in enumerate(continuations):
            if len(c) > 1:
                idx = torch.arange(len(c) - 1)
                scores[i] += logp[i, idx, torch.tensor(c[1:])].double().sum().item()
        return scores


def score_example(scorer: Scorer, tokenizer, example: Example) -> list[float]:
    """Log-likelihood of each request, each distinct context run once."""
    encoded = [encode_request(tokenizer, ctx, cont) for ctx, cont in example.requests]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, _) in enumerate(encoded):
        groups.setdefault(tuple(ctx), []).append(i)
    lls = [0.0] * len(encoded)
    for ctx, members in groups.items():
        for i, ll in zip(members, scorer.score(list(ctx), [encoded[i][1] for i in members]),
                         strict=True):
            lls[i] = ll
    return lls


def example_metrics(example: Example, lls: list[float]) -> dict[str, float]:
    """lm-eval's per-document ``acc`` and ``acc_norm`` (argmax; first index wins ties)."""
    lens = np.array([float(len(c)) for c in example.choices])
    lls_arr = np.array(lls)
    return {
        "acc": float(np.argmax(lls_arr) == example.gold),
        "acc_norm": float(np.argmax(lls_arr / lens) == example.gold),
    }


@dataclass
class TaskResult:
    task: str
    n: int
    acc: float
    acc_stderr: float
    acc_norm: float | None  # None where the harness task does not report it
    acc_norm_stderr: float | None
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _mean_stderr(values: list[float]) -> tuple[float, float]:
    """Mean and the harness's ``mean_stderr`` (sample std / sqrt(n))."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def run_task(scorer: Scorer, tokenizer, task: Task, docs: list[dict],
             progress: bool = True) -> TaskResult:
    """Score ``docs`` with ``task``'s prompts; the metrics the harness reports for it."""
    start = time.perf_counter()
    per_doc: list[dict[str, float]] = []
    bar = tqdm(docs, desc=task.name, unit="doc", disable=not progress)
    for doc in bar:
        example = task.build(doc)
        per_doc.append(example_metrics(example, score_example(scorer, tokenizer, example)))
        bar.set_postfix(acc=f"{sum(m['acc'] for m in per_doc) / len(per_doc):.3f}")
    acc, acc_se = _mean_stderr([m["acc"] for m in per_doc])
    norm, norm_se = (None, None)
    if "acc_norm" in task.metrics:
        norm, norm_se = _mean_stderr([m["acc_norm"] for m in per_doc])
    return TaskResult(task.name, len(per_doc), acc, acc_se, norm, norm_se,
                      time.perf_counter() - start)
