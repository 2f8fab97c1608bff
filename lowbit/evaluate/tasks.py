"""The zero-shot tasks: the LM-evaluation-harness (lm-eval 0.4.13) prompts, one function each.

Each task turns a dataset row into an :class:`Example`: the (context, continuation) pairs the
harness scores and the gold index. Multiple-choice tasks put each choice in the continuation
after the harness's target delimiter ``" "``; WinoGrande is the harness's partial evaluation:
each option completes the context and the shared rest of the sentence is scored. The templates
are those of ``lm_eval/tasks/{piqa,arc,hellaswag,winogrande,super_glue/boolq}``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from lowbit.errors import LowbitError
from lowbit.evaluate.task_data import TASK_DATA, TaskData

TARGET_DELIMITER = " "


@dataclass(frozen=True)
class Example:
    """One scored document: the requests, the strings whose length normalises acc_norm, gold."""

    requests: list[tuple[str, str]]  # (context, continuation), one per choice
    choices: list[str]  # what the harness calls doc_to_choice (acc_norm divides by len)
    gold: int


@dataclass(frozen=True)
class Task:
    name: str
    metrics: tuple[str, ...]  # those the harness task's metric_list reports
    build: Callable[[dict], Example]
    data: TaskData


def multiple_choice(context: str, choices: list[str], gold: int) -> Example:
    """Harness ``multiple_choice``: one request per choice, the choice in the continuation."""
    return Example([(context, f"{TARGET_DELIMITER}{c}") for c in choices], choices, gold)


def piqa(doc: dict) -> Example:
    return multiple_choice(f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]],
                           int(doc["label"]))


def arc(doc: dict) -> Example:
    labels = list(doc["choices"]["label"])
    return multiple_choice(f"Question: {doc['question']}\nAnswer:", list(doc["choices"]["text"]),
                           labels.index(doc["answerKey"]))


def hellaswag_preprocess(text: str) -> str:
    """``lm_eval/tasks/hellaswag/utils.py: preprocess`` (WikiHow bracket artifacts)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag(doc: dict) -> Example:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    query = hellaswag_preprocess(doc["activity_label"] + ": " + ctx)
    return multiple_choice(query, [hellaswag_preprocess(e) for e in doc["endings"]],
                           int(doc["label"]))


def winogrande(doc: dict) -> Example:
    """Partial evaluation: contexts are the sentence up to ``_`` with each option filled in."""
    idx = doc["sentence"].index("_")
    contexts = [doc["sentence"][:idx] + opt for opt in (doc["option1"], doc["option2"])]
    target = doc["sentence"][idx + 1 :].strip()
    requests = [(c, f"{TARGET_DELIMITER}{target}") for c in contexts]
    return Example(requests, contexts, {"1": 0, "2": 1}[doc["answer"]])


def boolq(doc: dict) -> Example:
    return multiple_choice(f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:",
                           ["no", "yes"], int(doc["label"]))


TASKS: dict[str, Task] = {
    "piqa": Task("piqa", ("acc", "acc_norm"), piqa, TASK_DATA["piqa"]),
    "arc_easy": Task("arc_easy", ("acc", "acc_norm"), arc, TASK_DATA["arc_easy"]),
    "arc_challenge": Task("arc_challenge", ("acc", "acc_norm"), arc, TASK_DATA["arc_challenge"]),
    "hellaswag": Task("hellaswag", ("acc", "acc_norm"), hellaswag, TASK_DATA["hellaswag"]),
    "winogrande": Task("winogrande", ("acc",), winogrande, TASK_DATA["winogrande"]),
    "boolq": Task("boolq", ("acc",), boolq, TASK_DATA["boolq"]),
}


def parse_tasks(names: str) -> list[Task]:
    """``"piqa,boolq"`` → tasks, refusing unknown names in one line."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in TASKS]
    if unknown or not wanted:
        raise LowbitError(f"unknown task(s) {unknown or names!r}; known: {', '.join(TASKS)}")
    return [TASKS[n] for n in wanted]
