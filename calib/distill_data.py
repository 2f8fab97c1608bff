"""Self-distillation data: the FP teacher writes the sequences the student trains on
(BitDistiller's ``data/generation``).

Prompts, as the reference's: the first ``prompt_chars`` (128) characters of the calibration
split's documents longer than 512 characters (its ``wikitext`` set), plus, with an instruction
file, one Alpaca-style prompt per instruction (``"{instruction}\\n{input}\\n"``). The teacher
samples a continuation of each at temperature 0.7, top-p 1, up to ``gen_tokens`` new tokens
(the reference: 1024), prompts left-truncated to 256 tokens. A sequence is the prompt's tokens
and the continuation's, up to and including the first end-of-sequence token. Sequences are
cached on disk, keyed by the model's weights, the prompts and these settings, with the time
their generation took.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import GenerationConfig

from lowbit.artifact import read_text
from lowbit.cache import atomic_file, cache_dir
from lowbit.corpus import corpus_documents, jsonl_rows, split_documents
from lowbit.errors import LowbitError

MIN_DOC_CHARS = 512  # the reference keeps wikitext lines longer than this
PROMPT_TOKENS = 256  # the reference's left-truncation cutoff of prompts


@dataclass(frozen=True)
class GenerationSettings:
    samples: int = 128  # prompts from the calibration split
    prompt_chars: int = 128
    gen_tokens: int = 1024  # new tokens at most
    temperature: float = 0.7
    top_p: float = 1.0
    batch_size: int = 8
    seed: int = 0


def corpus_prompts(data: Path | None, samples: int, prompt_chars: int, seed: int) -> list[str]:
    """``samples`` document openings from the calibration split, drawn at random (``seed``)."""
    _, docs = corpus_documents(data)
    long = [d for d in split_documents(docs, "calibration") if len(d) > MIN_DOC_CHARS]
    if len(long) < samples:
        raise LowbitError(f"the calibration split has {len(long)} documents longer than "
                          f"{MIN_DOC_CHARS} characters, {samples} asked")
    return [d[:prompt_chars] for d in random.Random(seed).sample(long, samples)]


def instruction_prompts(path: Path) -> list[str]:
    """Prompts of an instruction file: ``.jsonl`` rows with ``instruction`` (and optional
    ``input``), Alpaca's fields, or a ``.txt`` of prompts separated by blank lines."""
    path = Path(path)
    if not path.is_file():
        raise LowbitError(f"instruction file {path} not found")
    if path.suffix == ".txt":
        return [p.strip() + "\n" for p in read_text(path, "instructions file").split("\n\n") if p.strip()]
    if path.suffix != ".jsonl":
        raise LowbitError(f"instruction file {path} must be .jsonl or .txt")
    prompts = []
    for i, row in jsonl_rows(path):
        if "instruction" not in row:
            raise LowbitError(f"{path}:{i}: needs an 'instruction' field")
        extra = f"{row['input']}\n" if row.get("input") else ""
        prompts.append(f"{row['instruction']}\n{extra}")
    return prompts


@torch.no_grad()
def generate(model: torch.nn.Module, tokenizer, prompts: list[str], settings: GenerationSettings,
             progress: bool = True) -> list[torch.Tensor]:
    """Sample the teacher's continuation of each prompt (batched, left-padded)."""
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = pad
    dev = next(model.parameters()).device
    # explicit, so the model's own generation_config.json (repetition penalty, top-k) is not used
    config = GenerationConfig(do_sample=True, temperature=settings.temperature, top_p=settings.top_p,
                              top_k=0, max_new_tokens=settings.gen_tokens, pad_token_id=pad,
                              eos_token_id=eos)
    out: list[torch.Tensor] = []
    starts = range(0, len(prompts), settings.batch_size)
    for b in tqdm(starts, desc="teacher data", unit="batch", disable=not progress):
        enc = tokenizer(prompts[b : b + settings.batch_size], return_tensors="pt", padding=True,
                        truncation=True, max_length=PROMPT_TOKENS)
        torch.manual_seed(settings.seed * 1000 + b)
        seqs = model.generate(input_ids=enc.input_ids.to(dev),
                              attention_mask=enc.attention_mask.to(dev), generation_config=config).cpu()
        width = enc.input_ids.shape[1]
        for row, mask in zip(seqs, enc.attention_mask, strict=True):
            new = row[width:]
            ends = (new == eos).nonzero()
            if len(ends):
                new = new[: int(ends[0]) + 1]
            out.append(torch.cat([row[:width][mask.bool()], new]))
    return out


def _weights_id(model_dir: Path) -> str:
    """The model folder and its weight files' sizes and times."""
    files = sorted(Path(model_dir).glob("*.safetensors")) + sorted(Path(model_dir).glob("*.bin"))
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return json.dumps([str(Path(model_dir).resolve()), stats])


def teacher_sequences(model_dir: Path, model: torch.nn.Module, tokenizer, prompts: list[str],
                      settings: GenerationSettings, progress: bool = True) -> tuple[list[torch.Tensor], float]:
    """(sequences, seconds their generation took): from the cache, else generated and cached."""
    key = hashlib.sha256(json.dumps(
        [_weights_id(model_dir), prompts, asdict(settings)], sort_keys=True).encode()).hexdigest()
    path = cache_dir() / "distill-data" / f"{key[:16]}.pt"
    if path.exists():
        cached = torch.load(path, weights_only=True)
        return cached["sequences"], float(cached["seconds"])
    start = time.perf_counter()
    seqs = generate(model, tokenizer, prompts, settings, progress)
    seconds = time.perf_counter() - start
    with atomic_file(path) as tmp:
        torch.save({"sequences": seqs, "seconds": seconds}, tmp)
    return seqs, seconds
