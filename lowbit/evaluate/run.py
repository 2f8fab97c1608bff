"""Evaluation entry points that resolve a MODEL argument and return JSON-ready results."""

from __future__ import annotations

from pathlib import Path

from lowbit.corpus import WIKI_NAME, eval_windows, split_tokens
from lowbit.evaluate.perplexity import perplexity, torch_logits_fn
from lowbit.models import is_fused, load_tokenizer, load_torch_model, resolve_model


def evaluate_perplexity(
    model: str, split: str = "test", seqlen: int = 512, windows: int = 64,
    batch_size: int = 4, data: Path | None = None, progress: bool = True,
) -> dict:
    """Perplexity of a PyTorch model (HF or fused) on a corpus split."""
    folder = resolve_model(model)
    tokenizer = load_tokenizer(folder)
    ids = eval_windows(split_tokens(tokenizer, split, data), seqlen, windows)
    net = load_torch_model(folder)
    result = perplexity(torch_logits_fn(net), ids, batch_size, progress)
    return {
        "model": str(model),
        "folder": str(folder),
        "kind": "fused" if is_fused(folder) else "hf",
        "corpus": str(data) if data else WIKI_NAME,
        "split": split,
        **result.to_dict(),
    }


def evaluate_compiled_perplexity(
    mlc_dir: Path, model_lib: Path, split: str = "test", seqlen: int = 512, windows: int = 64,
    data: Path | None = None, progress: bool = True,
) -> dict:
    """Perplexity of a compiled library (``lowbit compile``) on its MLC folder; same windows."""
    from lowbit.artifact import read_chat_config
    from lowbit.runtime.engine import Engine

    read_chat_config(Path(mlc_dir))  # one line for a folder that is not an MLC folder
    tokenizer = load_tokenizer(Path(mlc_dir))
    ids = eval_windows(split_tokens(tokenizer, split, data), seqlen, windows)
    engine = Engine(Path(mlc_dir), Path(model_lib), context_window=seqlen)
    result = perplexity(engine_logits_fn(engine), ids, 1, progress)
    return {
        "model": str(mlc_dir),
        "model_lib": str(model_lib),
        "kind": "compiled",
        "corpus": str(data) if data else WIKI_NAME,
        "split": split,
        **result.to_dict(),
    }


def engine_logits_fn(engine):
    """A perplexity ``LogitsFn`` over a compiled model: each window scored as a fresh sequence."""
    import numpy as np

    def run(batch: np.ndarray) -> np.ndarray:
        out = []
        for window in batch:
            if engine.has_sequence(0):
                engine.remove_sequence(0)
            engine.add_sequence(0)
            out.append(engine.all_logits(0, [int(t) for t in window]))
        return np.stack(out)

    return run
