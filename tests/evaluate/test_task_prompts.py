"""Each task's requests equal what lm-eval 0.4.13's own task config renders for the same rows.

The reference reads the task YAMLs and helper modules out of the ``lm-eval`` wheel and applies
them the way ``ConfigurableTask`` does (Jinja2 with StrictUndefined, features by name,
``ast.literal_eval`` of rendered choice lists, ``!function`` helpers, target delimiter " ",
partial evaluation when ``doc_to_text`` gives an index). The rows are the real local data.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import types
from pathlib import Path

import jinja2
import pytest
import yaml

from lowbit.evaluate.tasks import TASKS
from lowbit.packages import PackagedFile, packaged_file

LM_EVAL = ("lm-eval", "0.4.13")
CONFIGS = {
    "piqa": "piqa/piqa.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "winogrande": "winogrande/default.yaml",
    "boolq": "super_glue/boolq/default.yaml",
}
HELPERS = {"hellaswag": "hellaswag/utils.py", "winogrande": "winogrande/preprocess_winogrande.py"}
ENV = jinja2.Environment(loader=jinja2.BaseLoader, undefined=jinja2.StrictUndefined,
                         keep_trailing_newline=True)


def harness_file(member: str) -> Path:
    return packaged_file(PackagedFile(*LM_EVAL, f"lm_eval/tasks/{member}", "MIT"))


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!function", lambda loader, node: ("!function", loader.construct_scalar(node)))


def load_config(member: str) -> dict:
    cfg = yaml.load(harness_file(member).read_text(), Loader=_Loader)
    if "include" in cfg:
        base = load_config(str(Path(member).parent / cfg.pop("include")))
        cfg = {**base, **cfg}
    return cfg


class _Rows(list):
    """The ``datasets.Dataset.map`` a ``process_docs`` calls: merges the returned columns."""

    def map(self, fn):
        return _Rows({**row, **fn(row)} for row in self)


def load_helper(member: str) -> types.ModuleType:
    # hellaswag/utils.py imports `datasets` for a type hint only: a stub stands in while loading.
    stub = types.ModuleType("datasets")
    stub.Dataset = _Rows
    saved = sys.modules.get("datasets")
    sys.modules["datasets"] = stub
    try:
        path = harness_file(member)
        spec = importlib.util.spec_from_file_location(f"harness_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            del sys.modules["datasets"]
        else:
            sys.modules["datasets"] = saved
    return module


def harness_requests(task: str, docs: list[dict]) -> list[tuple[list[tuple[str, str]], list, int]]:
    cfg = load_config(CONFIGS[task])
    helper = load_helper(HELPERS[task]) if task in HELPERS else None

    def field(spec, doc):
        if isinstance(spec, tuple):  # !function module.name
            return getattr(helper, spec[1].split(".")[-1])(doc)
        if isinstance(spec, str) and spec in doc:
            return doc[spec]
        return ENV.from_string(spec).render(**doc) if isinstance(spec, str) else spec

    if "process_docs" in cfg:
        docs = getattr(helper, cfg["process_docs"][1].split(".")[-1])(_Rows(docs))
    delim = cfg.get("target_delimiter", " ")
    out = []
    for doc in docs:
        text = field(cfg["doc_to_text"], doc)
        choice_spec = cfg["doc_to_choice"]
        choices = field(choice_spec, doc)
        if isinstance(choices, str):
            choices = ast.literal_eval(choices)
        target = field(cfg["doc_to_target"], doc)
        if isinstance(target, str) and target.isdigit():
            target = ast.literal_eval(target)
        if isinstance(text, int):  # partial evaluation: choices are contexts
            out.append(([(c, f"{delim}{target}") for c in choices], choices, text))
        else:
            gold = choices.index(target) if isinstance(target, str) else target
            out.append(([(text, f"{delim}{c}") for c in choices], choices, gold))
    return out


@pytest.mark.parametrize("task", list(TASKS))
def test_prompts_equal_harness_templates(task):
    docs = TASKS[task].data.load()[:3]
    want = harness_requests(task, [dict(d) for d in docs])
    for doc, (requests, choices, gold) in zip(docs, want, strict=True):
        ex = TASKS[task].build(doc)
        assert ex.requests == requests
        assert ex.choices == list(choices)
        assert ex.gold == gold


def test_task_sizes_and_licences():
    sizes = {"piqa": 1838, "arc_easy": 2376, "arc_challenge": 1172, "hellaswag": 10042,
             "winogrande": 1267, "boolq": 3270}
    for name, task in TASKS.items():
        assert len(task.data.load()) == sizes[name]
        assert task.data.license
