"""lowbit's zero-shot scores against lm-eval's own run, on the same local documents.

    pip install 'lowbit[harness]'      # lm-eval 0.4.13 (pulls datasets, pandas, ...)
    OMP_NUM_THREADS=1 nice python bench/harness_equality.py --limit 10

Writes each task's first N rows (as lowbit loads them) to JSONL, registers lm-eval tasks that
``include`` the harness's own task YAMLs with only the data source replaced, runs lm-eval's
``HFLM`` on the FP model, and compares per request: the (context, continuation) strings, the
log-likelihoods, and per document acc / acc_norm. Result: ``bench/results/harness_equality.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from provenance import record  # noqa: E402

from lowbit.cache import atomic_file  # noqa: E402
from lowbit.evaluate.harness import TorchScorer, example_metrics, score_example  # noqa: E402
from lowbit.evaluate.tasks import TASKS  # noqa: E402
from lowbit.evaluate.zeroshot import DEFAULT_TASKS, model_max_length  # noqa: E402
from lowbit.models import load_tokenizer, load_torch_model, resolve_model  # noqa: E402

RESULTS = Path(__file__).parent / "results"
HARNESS_YAML = {
    "piqa": "piqa/piqa.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "winogrande": "winogrande/default.yaml",
    "boolq": "super_glue/boolq/default.yaml",
}


def write_local_tasks(folder: Path, names: list[str], limit: int) -> dict[str, list[dict]]:
    """JSONL rows plus a task YAML per task that includes the harness's and swaps the data."""
    import lm_eval

    harness_tasks = Path(lm_eval.__file__).parent / "tasks"
    docs = {}
    for name in names:
        task = TASKS[name]
        rows = task.data.load()[:limit]
        docs[name] = rows
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        split = task.data.split
        cfg = {
            "include": str(harness_tasks / HARNESS_YAML[name]),
            "task": f"local_{name}",
            "tag": [],
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: str(data)}},
            "training_split": None,
            "validation_split": split if split == "validation" else None,
            "test_split": split if split == "test" else None,
        }
        (folder / f"local_{name}.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    return docs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", default=DEFAULT_TASKS)
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--results", type=Path, default=RESULTS / "harness_equality.json")
    args = ap.parse_args()

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    names = args.tasks.split(",")
    folder = resolve_model(args.model)
    tokenizer = load_tokenizer(folder)
    net = load_torch_model(folder)
    scorer = TorchScorer(net, model_max_length(net))
    lm = HFLM(pretrained=net, tokenizer=tokenizer, batch_size=1, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        docs = write_local_tasks(Path(tmp), names, args.limit)
        out = lm_eval.simple_evaluate(
            model=lm, tasks=[f"local_{n}" for n in names], num_fewshot=0, log_samples=True,
            task_manager=TaskManager(include_path=tmp),
        )
    report = {"model": args.model, "lm_eval": lm_eval.__version__, "limit": args.limit,
              "tasks": {}}
    for name in names:
        samples = sorted(out["samples"][f"local_{name}"], key=lambda s: s["doc_id"])
        max_diff, prompts_equal, metrics_equal = 0.0, True, True
        for s in samples:
            ex = TASKS[name].build(docs[name][s["doc_id"]])
            args_ = s["arguments"]
            args_ = args_.values() if isinstance(args_, dict) else args_
            theirs_args = [tuple(a.values() if isinstance(a, dict) else a)[:2] for a in args_]
            prompts_equal &= theirs_args == ex.requests
            theirs_ll = [float(r[0]) for r in s["filtered_resps"]]
            ours_ll = score_example(scorer, tokenizer, ex)
            max_diff = max(max_diff, *(abs(a - b) for a, b in zip(ours_ll, theirs_ll, strict=True)))
            ours = example_metrics(ex, ours_ll)
            metrics_equal &= all(ours[m] == s[m] for m in ("acc", "acc_norm") if m in s)
        report["tasks"][name] = {"n": len(samples), "prompts_equal": prompts_equal,
                                 "max_abs_loglik_diff": max_diff,
                                 "per_doc_metrics_equal": metrics_equal,
                                 "harness": {k: v for k, v in out["results"][f"local_{name}"].items()
                                             if k.startswith("acc")}}
        print(name, report["tasks"][name])
    report["provenance"] = record()
    with atomic_file(args.results) as t:
        t.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
