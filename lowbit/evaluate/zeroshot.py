"""``lowbit eval tasks``: zero-shot accuracy of an HF or fused model on the harness tasks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from lowbit.errors import LowbitError
from lowbit.evaluate.harness import TorchScorer, run_task
from lowbit.evaluate.tasks import parse_tasks
from lowbit.models import is_fused, load_tokenizer, load_torch_model, resolve_model

DEFAULT_TASKS = "piqa,arc_easy,arc_challenge,hellaswag,winogrande,boolq"
DEFAULT_MAX_LENGTH = 2048  # lm-eval HFLM's fallback when the config names none


@dataclass(frozen=True)
class TasksArgs:
    model: str
    tasks: str = DEFAULT_TASKS
    limit: int | None = None  # the first N documents of each task's split
    progress: bool = True


def model_max_length(net) -> int:
    """lm-eval HFLM ``max_length``: the config's context length."""
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        if getattr(net.config, attr, None):
            return int(getattr(net.config, attr))
    return DEFAULT_MAX_LENGTH


def iter_task_results(args: TasksArgs) -> Iterator[tuple[str, dict]]:
    """(task, result) as each task finishes; a result names its n, split, source and licence."""
    tasks = parse_tasks(args.tasks)
    if args.limit is not None and args.limit < 1:
        raise LowbitError(f"--limit must be at least 1, got {args.limit}")
    folder = resolve_model(args.model)
    tokenizer = load_tokenizer(folder)
    net = load_torch_model(folder)
    scorer = TorchScorer(net, model_max_length(net))
    for task in tasks:
        docs = task.data.load()
        total = len(docs)
        docs = docs[: args.limit] if args.limit else docs
        result = run_task(scorer, tokenizer, task, docs, args.progress)
        yield task.name, {
            **result.to_dict(),
            "of": total,
            "split": task.data.split,
            "source": task.data.describe(),
            "license": task.data.license,
        }


def evaluate_tasks(args: TasksArgs) -> dict:
    """Accuracy of MODEL per task, with the model and protocol it was measured with."""
    folder = resolve_model(args.model)
    return {
        "model": args.model,
        "folder": str(folder),
        "kind": "fused" if is_fused(folder) else "hf",
        "protocol": "lm-eval 0.4.13 zero-shot log-likelihood (acc, acc_norm)",
        "limit": args.limit,
        "tasks": dict(iter_task_results(args)),
    }
