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
    data: Path | None = None, progress: bool = True, decode: bool = False,
) -> dict:
    """Perplexity of a compiled library (``lowbit compile``) on its MLC folder; same windows.
    ``decode``: every position's logits come from a one-token step, as in generation."""
    from lowbit.artifact import read_chat_config
    from lowbit.runtime.engine import Engine

    read_chat_config(Path(mlc_dir))  # one line for a folder that is not an MLC folder
    tokenizer = load_tokenizer(Path(mlc_dir))
    ids = eval_windows(split_tokens(tokenizer, split, data), seqlen, windows)
    engine = Engine(Path(mlc_dir), Path(model_lib), context_window=seqlen)
    result = perplexity(engine_logits_fn(engine, decode), ids, 1, progress)
    return {
        "model": str(mlc_dir),
        "model_lib": str(model_lib),
        "kind": "compiled",
        "decode": decode,
        "decode_activations": engine.metadata.decode_activations if engine.metadata else "fp",
        "prefill_activations": engine.metadata.config.get("prefill_activations", "fp") if engine.metadata else "fp",
        "corpus": str(data) if data else WIKI_NAME,
        "split": split,
        **result.to_dict(),
    }


def engine_logits_fn(engine, decode: bool = False):
    """A perplexity ``LogitsFn`` over a compiled model: each window scored as a fresh sequence,
    in prefill chunks, or (``decode``) one token per step: the first as a one-token prefill, each
    next one through ``decode``, the kernels generation runs (``--decode-activations int8``)."""
    import numpy as np

    def window_logits(tokens: list[int]) -> np.ndarray:
        if not decode:
            return engine.all_logits(0, tokens)
        return np.stack([engine.prefill(0, tokens[:1])] + [engine.decode(0, t) for t in tokens[1:]])

    def run(batch: np.ndarray) -> np.ndarray:
        out = []
        for window in batch:
            if engine.has_sequence(0):
                engine.remove_sequence(0)
            engine.add_sequence(0)
            out.append(window_logits([int(t) for t in window]))
        return np.stack(out)

    return run
