"""The LM-evaluation-harness log-likelihood protocol, scored with shared contexts.

For each (context, continuation) pair the harness moves the context's trailing whitespace to
the continuation, encodes ``context + continuation`` and ``context`` without extra special
tokens beyond the tokenizer's default, and takes the continuation tokens as the tail of the
whole encoding past the context's length. The score is the summed log-probability of those
tokens given ``context_ids``. ``acc`` takes the argmax of the scores, ``acc_norm`` the argmax
of the scores divided by each choice string's length in characters (``len(choice)``, as
lm-eval 0.4.13 ``ConfigurableTask.process_results`` computes it).

Requests that share a context are scored together, and documents are scored in batches: the
batch's distinct contexts run once, left-padded (attention mask and explicit positions), their KV
cache is gathered once per continuation, and the continuations run as one right-padded batch
(causal attention makes the right padding invisible to the positions that are read).
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

Group = tuple[list[int], Sequence[list[int]]]  # a context and the continuations scored after it
BATCH_DOCS = 16  # documents per batch


class Scorer(Protocol):
    def score_groups(self, groups: Sequence[Group]) -> list[list[float]]:
        """Per group, the summed log-probability of each continuation's tokens after its context."""
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

    def score(self, context: list[int], continuations: Sequence[list[int]]) -> list[float]:
        return self.score_groups([(context, continuations)])[0]

    def _truncate(self, context: list[int], continuations: Sequence[list[int]]) -> list[int]:
        """lm-eval keeps the last max_length + 1 tokens of context + continuation."""
        longest = max(len(c) for c in continuations)
        return context[max(0, len(context) + longest - self.max_length - 1) :]

    @torch.inference_mode()
    def score_groups(self, groups: Sequence[Group]) -> list[list[float]]:
        contexts = [self._truncate(ctx, conts) for ctx, conts in groups]
        width = max(len(c) for c in contexts)
        ids = torch.tensor([[0] * (width - len(c)) + c for c in contexts])
        mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1)
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        scores = [[first[g, c[0]].item() for c in conts] for g, (_, conts) in enumerate(groups)]
        rows = [(g, i) for g, (_, conts) in enumerate(groups) for i, c in enumerate(conts)
                if len(c) > 1]
        if not rows:
            return scores
        conts = [groups[g][1][i] for g, i in rows]
        owner = torch.tensor([g for g, _ in rows])
        cache = getattr(out, self.cache_kw)  # reading the old name warns too
        cache.batch_select_indices(owner)
        longest = max(len(c) - 1 for c in conts)
        inputs = torch.tensor([c[:-1] + [0] * (longest - len(c) + 1) for c in conts])
        cont_mask = torch.tensor([[1] * (len(c) - 1) + [0] * (longest - len(c) + 1) for c in conts])
        lengths = torch.tensor([len(c) for c in contexts])[owner]
        logp = torch.log_softmax(self.model(
            inputs, attention_mask=torch.cat([mask[owner], cont_mask], dim=1),
            position_ids=lengths[:, None] + torch.arange(longest)[None, :],
            **{self.cache_kw: cache},
        ).logits.float(), -1)
        for row, ((g, i), c) in enumerate(zip(rows, conts, strict=True)):
            idx = torch.arange(len(c) - 1)
            scores[g][i] += logp[row, idx, torch.tensor(c[1:])].double().sum().item()
        return scores


def score_examples(scorer: Scorer, tokenizer, examples: Sequence[Example]) -> list[list[float]]:
    """Log-likelihood of each request of each example; each distinct context runs once."""
    encoded = [[encode_request(tokenizer, ctx, cont) for ctx, cont in ex.requests] for ex in examples]
    groups: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for e, requests in enumerate(encoded):
        for r, (ctx, _) in enumerate(requests):
            groups.setdefault(tuple(ctx), []).append((e, r))
    lls = [[0.0] * len(requests) for requests in encoded]
    batch = [(list(ctx), [encoded[e][r][1] for e, r in members]) for ctx, members in groups.items()]
    for members, scores in zip(groups.values(), scorer.score_groups(batch), strict=True):
        for (e, r), ll in zip(members, scores, strict=True):
            lls[e][r] = ll
    return lls


def score_example(scorer: Scorer, tokenizer, example: Example) -> list[float]:
    """Log-likelihood of each request of one example."""
    return score_examples(scorer, tokenizer, [example])[0]


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
    bar = tqdm(total=len(docs), desc=task.name, unit="doc", disable=not progress)
    for i in range(0, len(docs), BATCH_DOCS):
        examples = [task.build(doc) for doc in docs[i : i + BATCH_DOCS]]
        for example, lls in zip(examples, score_examples(scorer, tokenizer, examples), strict=True):
            per_doc.append(example_metrics(example, lls))
        bar.update(len(examples))
        bar.set_postfix(acc=f"{sum(m['acc'] for m in per_doc) / len(per_doc):.3f}")
    bar.close()
    acc, acc_se = _mean_stderr([m["acc"] for m in per_doc])
    norm, norm_se = (None, None)
    if "acc_norm" in task.metrics:
        norm, norm_se = _mean_stderr([m["acc_norm"] for m in per_doc])
    return TaskResult(task.name, len(per_doc), acc, acc_se, norm, norm_se,
                      time.perf_counter() - start)
