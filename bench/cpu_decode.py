"""CPU prefill and decode speed: lowbit vs PyTorch eager fp32 vs llama.cpp vs the read-bandwidth limit.

    python bench/cpu_decode.py [--model smollm2-135m] [--schemes q4f16_1,q4f16_1+int8,…]
                               [--prompt-tokens 128] [--new-tokens 32] [--batch-sizes 1,8,32] [--profile]
                               [--contexts 128,1024,8000 [--context-rounds 2]] [--build-dir DIR] [--llama-cpp DIR]

Converts and compiles each scheme into ``$LOWBIT_CACHE/bench/cpu_decode/build-VERSION/`` (or
``--build-dir``; VERSION hashes the converter's and compiler's code, ``provenance.build_version``,
so a build is reused only by the code that made it; ``SCHEME+int8`` compiles with ``--decode-activations int8``, ``+int8x2`` with
``--decode-activations int8x2``, ``+pint8`` with
``--prefill-activations int8``, ``+kv16`` with ``--kv-cache-dtype float16``), then times
prefill of the same prompt and greedy decode in the same run, on every CPU (the runtime's default
thread count), beside PyTorch eager in fp32 and bf16. llama.cpp's ``llama-bench`` runs the bundled
Q4_1 GGUF and a Q4_0 requantization of it with as many threads, when ``--llama-cpp DIR`` holds a
build (``../shared/tools/build_llamacpp.sh DIR``; skipped, and said so, otherwise).

Every row records the bytes of weights its engine reads per decode token (each weight once: the
tied embedding as the lm_head; llama.cpp: the GGUF's tensor data) and the read bandwidth measured
in the same run (NumPy max-reductions over 512 MiB, one thread per CPU), so each row has its own
limit, bandwidth ÷ bytes. Writes the rows to ``bench/results/cpu_decode.json``, a bar chart of
decode tok/s with each row's limit to ``cpu_decode.svg``, and prints the README's table
(:func:`markdown`; ``bench/readme_tables.py`` keeps the README's copy in step). Every engine is
loaded first and gets a warm-up run; then ``--rounds`` rounds each run every engine once, in
turn, and each keeps its best, so a slow spell of a shared machine falls on all engines alike
rather than on whichever ran during it (llama.cpp: one ``llama-bench`` repetition per round).

With ``--profile``, each lowbit row also records its decode step's time per operator kind
(``lowbit bench --profile``), printed after the table.

With ``--batch-sizes``, each scheme's ``batch_decode`` is timed too: B sequences holding the
prompt, then ``--new-tokens`` greedy steps of one ``batch_decode`` call for all B; the aggregate
decode tok/s (B × steps / seconds) goes to ``bench/results/cpu_batch_decode.json`` and a second
table, with its ratio to the single-sequence decode above.

With ``--contexts``, the run measures long contexts instead: for each prompt length, each lowbit
scheme's prefill (profiled: the attention's and the linears' GFLOP/s) and then ``--new-tokens``
decode steps after it, beside llama.cpp's prefill of that length and its decode at that depth
(``llama-bench -d``, its default f16 KV cache), ``--context-rounds`` rounds in turn, best kept.
Each decode's limit counts the KV cache it reads per token with the weights. Rows go to
``bench/results/cpu_long_context.json``, with a table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from provenance import build_dir, record

from lowbit.runtime.speed import (
    Profile,
    best_of,
    kv_bytes,
    profile_decode,
    profile_prefill,
    prompt_ids,
    read_bandwidth,
    sequence_run,
    weight_bytes,
)

RESULTS = Path(__file__).parent / "results" / "cpu_decode.json"
PLOT = RESULTS.with_suffix(".svg")
BATCH_RESULTS = Path(__file__).parent / "results" / "cpu_batch_decode.json"
CONTEXT_RESULTS = Path(__file__).parent / "results" / "cpu_long_context.json"


@dataclass
class Row:
    engine: str
    scheme: str
    threads: int
    prompt_tokens: int
    new_tokens: int
    prefill_tok_s: float
    decode_tok_s: float
    weight_bytes: int  # read per decode token
    read_gb_s: float = 0.0  # measured in the same run
    profile: dict | None = None  # lowbit rows: a decode step by operator kind (--profile)


@dataclass
class BatchRow:
    scheme: str
    threads: int
    batch: int
    prompt_tokens: int
    new_tokens: int
    decode_tok_s: float  # aggregate over the batch


Timed = tuple[Callable[[float, float], Row], Callable[[], tuple[float, float]]]  # row from (prefill s, decode s), one run


def torch_engine(folder: Path, ids: list[int], new: int, dtype: str) -> Timed:
    """PyTorch eager (``dtype``: "fp32" or "bf16") with its KV cache, greedy."""
    import torch

    from lowbit.models import load_torch_model

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    model = load_torch_model(folder).to(torch_dtype).eval()
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())  # tied: counted once

    @torch.inference_mode()
    def run() -> tuple[float, float]:
        t0 = time.perf_counter()
        out = model(torch.tensor([ids]), use_cache=True)
        t1 = time.perf_counter()
        past, tok = out.past_key_values, int(out.logits[0, -1].argmax())
        for _ in range(new):
            out = model(torch.tensor([[tok]]), past_key_values=past, use_cache=True)
            past, tok = out.past_key_values, int(out.logits[0, -1].argmax())
        return t1 - t0, time.perf_counter() - t1

    threads = torch.get_num_threads()
    return (lambda prefill, decode: Row("pytorch-eager", dtype, threads, len(ids), new,
                                        len(ids) / prefill, new / decode, nbytes)), run


def decode_option(options: list[str]) -> str:
    """``--decode-activations`` of a variant's options (``int8``, ``int8x2`` or neither: fp)."""
    kinds = [o for o in options if o in ("int8", "int8x2")]
    return kinds[0] if kinds else "fp"


def build_scheme(model: str, variant: str, root: Path) -> tuple[Path, Path]:
    """``variant``: a scheme, with ``+int8`` (``+int8x2``) for int8 (two-term int8) decode
    activations, ``+pint8`` for int8 prefill activations and ``+kv16`` for an fp16 KV cache
    (``q4f16_1+int8+pint8+kv16``), converted and compiled under ``root``'s folder for today's
    build version (:func:`provenance.build_dir`) unless already there."""
    from lowbit.compiler.compile import CompileArgs, compile_model
    from lowbit.compiler.convert import ConvertArgs, convert

    scheme, *options = variant.split("+")
    root = build_dir(root)  # the build version's folder: built by today's converter and compiler
    mlc, lib = root / f"{model}-{scheme}", root / f"{model}-{variant.replace('+', '-')}.so"
    if not mlc.exists():
        convert(ConvertArgs(model, scheme, mlc))
    if not lib.exists():
        compile_model(CompileArgs(mlc, "llvm", lib, decode_activations=decode_option(options),
                                  prefill_activations="int8" if "pint8" in options else "fp",
                                  kv_cache_dtype="float16" if "kv16" in options else ""))
    return mlc, lib


def llama_bench(llama: Path, gguf: Path, threads: int, *args: object) -> list[dict]:
    """One ``llama-bench`` repetition with ``args``: its JSON tests."""
    import subprocess

    bindir = llama / "build" / "bin"
    out = subprocess.run([str(bindir / "llama-bench"), "-m", str(gguf), "-t", str(threads), "-r", "1", "-o", "json",
                          *map(str, args)],
                         check=True, capture_output=True, text=True, env={**os.environ, "LD_LIBRARY_PATH": str(bindir)})
    return json.loads(out.stdout)


def llama_cpp_engine(llama: Path, gguf: Path, label: str, prompt: int, new: int, threads: int) -> Timed:
    """llama-bench, one repetition per run: its prefill and decode seconds."""

    def run() -> tuple[float, float]:
        tests = llama_bench(llama, gguf, threads, "-p", prompt, "-n", new)
        pp = next(t["avg_ts"] for t in tests if t["n_prompt"] and not t["n_gen"])
        tg = next(t["avg_ts"] for t in tests if t["n_gen"] and not t["n_prompt"])
        return prompt / pp, new / tg

    nbytes = gguf_tensor_bytes(gguf)
    return (lambda prefill, decode: Row("llama.cpp", label, threads, prompt, new, prompt / prefill,
                                        new / decode, nbytes)), run


def gguf_tensor_bytes(path: Path) -> int:
    """Bytes of a GGUF's tensor data (its tokenizer and metadata excluded)."""
    from gguf import GGUFReader

    return sum(int(t.n_bytes) for t in GGUFReader(path).tensors)


def llama_cpp_ggufs(llama: Path, root: Path) -> dict[str, Path]:
    """The bundled Q4_1 GGUF and its Q4_0 requantization, by label; none without a build."""
    import subprocess

    from lowbit.packages import SMOLLM2_GGUF, packaged_file

    bindir = llama / "build" / "bin"
    if not (bindir / "llama-bench").exists():
        print(f"llama.cpp rows skipped: no {bindir / 'llama-bench'} (../shared/tools/build_llamacpp.sh)")
        return {}
    q41 = packaged_file(SMOLLM2_GGUF)
    q40 = root / "smollm2-135m-q4_0.gguf"
    if not q40.exists():
        subprocess.run([str(bindir / "llama-quantize"), "--allow-requantize", str(q41), str(q40), "Q4_0"],
                       check=True, capture_output=True, env={**os.environ, "LD_LIBRARY_PATH": str(bindir)})
    return {"Q4_1": q41, "Q4_0": q40}


def lowbit_engine(mlc: Path, lib: Path, scheme: str, ids: list[int], new: int, profile: bool) -> Timed:
    """A compiled library on its folder; its row carries a decode profile when ``profile``."""
    from lowbit.runtime.engine import Engine

    engine = Engine(mlc, lib, context_window=len(ids) + new + 16)
    nbytes = weight_bytes(mlc)

    def row(prefill: float, decode: float) -> Row:
        ops = profile_decode(engine, ids, new).to_dict() if profile else None
        return Row("lowbit-llvm", scheme, engine.threads, len(ids), new, len(ids) / prefill,
                   new / decode, nbytes, profile=ops)

    return row, sequence_run(engine, ids, new)


def interleaved(engines: list[Timed], rounds: int) -> list[Row]:
    """Each engine's row from its best prefill and decode over ``rounds`` rounds, every round
    running each engine once in turn, after one warm-up run of each."""
    for _, run in engines:
        run()
    times = [[run() for _, run in engines] for _ in range(rounds)]
    return [make(min(t[i][0] for t in times), min(t[i][1] for t in times))
            for i, (make, _) in enumerate(engines)]


def bench_batch(mlc: Path, lib: Path, scheme: str, ids: list[int], new: int,
                sizes: list[int]) -> list[BatchRow]:
    """Aggregate ``batch_decode`` tok/s at each batch size (best of :data:`lowbit.runtime.speed.REPEATS` after a
    warm-up); every sequence holds the prompt, and is rewound to it before each run."""
    from lowbit.runtime.engine import Engine

    engine = Engine(mlc, lib, max_batch_size=max(sizes), context_window=len(ids) + new + 16)
    first = int(np.argmax(engine.prefill(engine.add_sequence(0), ids)))
    for seq in range(1, max(sizes)):
        engine.fork_sequence(0, seq)
    rows = []
    for b in sizes:
        _, seconds = best_of(lambda b=b: _batch_run(engine, b, len(ids), first, new))
        rows.append(BatchRow(scheme, engine.threads, b, len(ids), new, b * new / seconds))
    return rows


def _batch_run(engine, b: int, prompt: int, first: int, new: int) -> tuple[float, float]:
    """(0, seconds of ``new`` greedy batch_decode steps of sequences 0..b-1 from the prompt)."""
    seqs = list(range(b))
    for seq in seqs:
        engine.rewind(seq, prompt)
    tokens = [first] * b
    t0 = time.perf_counter()
    for _ in range(new):
        tokens = [int(t) for t in np.argmax(engine.decode_batch(seqs, tokens), axis=1)]
    return 0.0, time.perf_counter() - t0


# -- long context: a prompt of each length, then decode after it ---------------------------------

@dataclass
class ContextRow:
    engine: str
    scheme: str
    kv_dtype: str
    threads: int
    context: int  # prompt tokens; decode runs after them
    new_tokens: int
    prefill_tok_s: float
    decode_tok_s: float
    weight_bytes: int
    kv_bytes: int  # KV cache read per decode token, at the decode steps' mean context
    read_gb_s: float = 0.0
    attention_gflop_s: float | None = None  # lowbit: the prefill's attention calls
    linear_gflop_s: float | None = None  # lowbit: the prefill's quantized linears


ContextRun = Callable[[list[int]], ContextRow]  # one engine, one prompt


def prefill_flops(config: dict, tokens: int) -> tuple[float, float]:
    """(attention, linear) FLOPs of a causal prefill of ``tokens``: q·k and p·v over the keys each
    query sees, and the decoder layers' linears (the lm_head runs on the last position only)."""
    h, d, layers = config["hidden_size"], config["head_dim"], config["num_hidden_layers"]
    hq, hkv, inter = config["num_attention_heads"], config["num_key_value_heads"], config["intermediate_size"]
    attention = layers * hq * 4 * d * tokens * (tokens + 1) / 2
    linear = 2 * tokens * layers * (h * (hq + 2 * hkv) * d + hq * d * h + 3 * h * inter)
    return attention, linear


def lowbit_context_engine(mlc: Path, lib: Path, variant: str, new: int, longest: int) -> ContextRun:
    """The prefill profiled (its plain time is the prefill's), then ``new`` decode steps after it."""
    from lowbit.runtime.engine import Engine

    engine = Engine(mlc, lib, context_window=longest + new + 16)
    md, nbytes = engine.metadata, weight_bytes(mlc)

    def run(ids: list[int]) -> ContextRow:
        profile = profile_prefill(engine, ids)  # sequence 0 now holds the prompt
        token = ids[-1]
        t0 = time.perf_counter()
        for _ in range(new):
            token = int(np.argmax(engine.decode(0, token)))
        decode = time.perf_counter() - t0
        attention, linear = prefill_flops(md.config, len(ids))
        attention_ms = profile.ms_of(lambda kind: "attention" in kind)
        linear_ms = profile.ms_of(lambda kind: "matmul" in kind or "gemv" in kind)
        return ContextRow("lowbit-llvm", variant, md.kv_dtype, engine.threads, len(ids), new,
                          len(ids) * 1e3 / profile.step_ms, new / decode, nbytes,
                          kv_bytes(md.config, md.kv_dtype, len(ids) + new / 2),
                          attention_gflop_s=attention / attention_ms / 1e6, linear_gflop_s=linear / linear_ms / 1e6)

    return run


def llama_cpp_context_engine(llama: Path, gguf: Path, label: str, new: int, threads: int, config: dict) -> ContextRun:
    """``llama-bench``: prefill of the prompt's length, then decode at that depth (its default
    f16 KV cache)."""
    nbytes = gguf_tensor_bytes(gguf)

    def run(ids: list[int]) -> ContextRow:
        pp = llama_bench(llama, gguf, threads, "-p", len(ids), "-n", 0)[0]["avg_ts"]
        tg = llama_bench(llama, gguf, threads, "-p", 0, "-n", new, "-d", len(ids))[0]["avg_ts"]
        return ContextRow("llama.cpp", label, "float16", threads, len(ids), new, pp, tg, nbytes,
                          kv_bytes(config, "float16", len(ids) + new / 2))

    return run


def bench_contexts(engines: list[ContextRun], ids: list[int], contexts: list[int], rounds: int) -> list[ContextRow]:
    """Every engine at every context (the first ``contexts[0]`` tokens of ``ids`` … ), shortest
    first, after one untimed run of each at the shortest; ``rounds`` rounds each run every engine
    once in turn, and each row keeps its best prefill (with that run's GFLOP/s) and best decode."""
    for run in engines:
        run(ids[: contexts[0]])
    runs = [[run(ids[:n]) for n in contexts for run in engines] for _ in range(rounds)]
    best = [max((r[i] for r in runs), key=lambda row: row.prefill_tok_s) for i in range(len(runs[0]))]
    return [replace(row, decode_tok_s=max(r[i].decode_tok_s for r in runs)) for i, row in enumerate(best)]


def context_markdown(rows: list[dict]) -> str:
    """The README's table of ``cpu_long_context.json``: per context, each engine's prefill and
    decode, their ratios to llama.cpp Q4_0 at that context, the decode's share of its own limit
    ((weights + KV read per token) ÷ read bandwidth) and lowbit's prefill GFLOP/s."""
    q40 = {r["context"]: r for r in rows if r["engine"] == "llama.cpp" and r["scheme"] == "Q4_0"}
    lines = ["| context | engine | scheme | KV | prefill tok/s | × Q4_0 | decode tok/s | × Q4_0 "
             "| weights + KV MB / token | decode / own limit | prefill GFLOP/s: attention / linears |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = q40.get(r["context"])
        read = r["weight_bytes"] + r["kv_bytes"]
        limit = r["read_gb_s"] * 1e9 / read
        flops = (f"{r['attention_gflop_s']:.1f} / {r['linear_gflop_s']:.1f}" if r["attention_gflop_s"] else "–")
        lines.append(
            f"| {r['context']} | {r['engine']} | {r['scheme']} | {r['kv_dtype'].replace('float', 'fp')} "
            f"| {r['prefill_tok_s']:.1f} | {r['prefill_tok_s'] / ref['prefill_tok_s']:.2f} "
            f"| {r['decode_tok_s']:.1f} | {r['decode_tok_s'] / ref['decode_tok_s']:.2f} "
            f"| {r['weight_bytes'] / 1e6:.1f} + {r['kv_bytes'] / 1e6:.1f} | {r['decode_tok_s'] / limit:.2f} | {flops} |"
            if ref else
            f"| {r['context']} | {r['engine']} | {r['scheme']} | {r['kv_dtype'].replace('float', 'fp')} "
            f"| {r['prefill_tok_s']:.1f} | – | {r['decode_tok_s']:.1f} | – "
            f"| {r['weight_bytes'] / 1e6:.1f} + {r['kv_bytes'] / 1e6:.1f} | {r['decode_tok_s'] / limit:.2f} | {flops} |")
    lines.append(f"| read bandwidth (NumPy, same run) | {rows[0]['read_gb_s']:.1f} GB/s | | | | | | | | 1.00 | |")
    return "\n".join(lines) + "\n"


def long_contexts(args: argparse.Namespace, folder: Path, root: Path, contexts: list[int]) -> None:
    """The ``--contexts`` run: rows to :data:`CONTEXT_RESULTS` and the README's table printed."""
    from lowbit.artifact import read_chat_config
    from lowbit.cache import atomic_file
    from lowbit.models import load_tokenizer
    from lowbit.runtime.engine import cpu_threads

    ids = prompt_ids(load_tokenizer(folder), max(contexts))
    threads = cpu_threads()
    builds = {variant: build_scheme(args.model, variant, root) for variant in args.schemes.split(",")}
    engines = [lowbit_context_engine(mlc, lib, variant, args.new_tokens, max(contexts))
               for variant, (mlc, lib) in builds.items()]
    config = read_chat_config(next(iter(builds.values()))[0])["model_config"]
    engines += [llama_cpp_context_engine(args.llama_cpp, gguf, label, args.new_tokens, threads, config)
                for label, gguf in llama_cpp_ggufs(args.llama_cpp, root).items()]
    rows = bench_contexts(engines, ids, contexts, args.context_rounds)
    gbs = read_bandwidth(threads)
    rows = [asdict(replace(r, read_gb_s=gbs)) for r in rows]
    prov = record()
    with atomic_file(CONTEXT_RESULTS) as tmp:
        tmp.write_text(json.dumps([{**r, "provenance": prov} for r in rows], indent=2) + "\n")
    print(context_markdown(rows))


def main() -> None:
    from lowbit.cache import atomic_file, cache_dir
    from lowbit.models import load_tokenizer, resolve_model
    from lowbit.runtime.engine import cpu_threads

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--schemes", default="q4f16_1,q4f16_1+int8,w4a16g128asym,w4a16g128asym+int8")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch-sizes", default="", help="also time batch_decode, e.g. 1,8,32")
    ap.add_argument("--profile", action="store_true", help="also profile each lowbit row's decode step")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds over every engine (best kept)")
    ap.add_argument("--contexts", default="",
                    help="instead: prefill and decode at each prompt length, e.g. 128,1024,8000 (lowbit and llama.cpp)")
    ap.add_argument("--context-rounds", type=int, default=2, help="--contexts: timed rounds (best kept)")
    ap.add_argument("--build-dir", type=Path, help="where the MLC folders and libraries go (a folder per build version)")
    ap.add_argument("--llama-cpp", type=Path, default=Path(os.environ.get("LLAMA_CPP_DIR", "../scratch/llamacpp")))
    args = ap.parse_args()

    folder = resolve_model(args.model)
    root = args.build_dir or cache_dir() / "bench" / "cpu_decode"
    if args.contexts:
        long_contexts(args, folder, root, [int(n) for n in args.contexts.split(",")])
        return
    ids = prompt_ids(load_tokenizer(folder), args.prompt_tokens)
    sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    engines = [torch_engine(folder, ids, args.new_tokens, dtype) for dtype in ("fp32", "bf16")]
    builds = [(scheme, *build_scheme(args.model, scheme, root)) for scheme in args.schemes.split(",")]
    engines += [lowbit_engine(mlc, lib, scheme, ids, args.new_tokens, args.profile) for scheme, mlc, lib in builds]
    threads = cpu_threads()
    engines += [llama_cpp_engine(args.llama_cpp, gguf, label, len(ids), args.new_tokens, threads)
                for label, gguf in llama_cpp_ggufs(args.llama_cpp, root).items()]
    rows = interleaved(engines, args.rounds)
    batch_rows: list[BatchRow] = []
    for scheme, mlc, lib in builds if sizes else []:
        batch_rows += bench_batch(mlc, lib, scheme, ids, args.new_tokens, sizes)
    gbs = read_bandwidth(threads)
    rows = [replace(r, read_gb_s=gbs) for r in rows]
    prov = record()
    with atomic_file(RESULTS) as tmp:
        tmp.write_text(json.dumps([{**asdict(r), "provenance": prov} for r in rows], indent=2)
                       + "\n")
    with atomic_file(PLOT) as tmp:
        tmp.write_text(plot([asdict(r) for r in rows]))
    print(markdown([asdict(r) for r in rows]))
    for r in rows:
        if r.profile:
            print(f"\n{r.scheme}: " + Profile.from_dict(r.profile).table())
    if batch_rows:
        print_batch(batch_rows, {r.scheme: r.decode_tok_s for r in rows if r.engine == "lowbit-llvm"})


def batch_markdown(rows: list[dict]) -> str:
    """The README's table of ``cpu_batch_decode.json``: aggregate tok/s per batch size, and its
    ratio to the same scheme's batch of one."""
    sizes = sorted({r["batch"] for r in rows})
    schemes = list(dict.fromkeys(r["scheme"] for r in rows))
    tok = {(r["scheme"], r["batch"]): r["decode_tok_s"] for r in rows}
    lines = ["| scheme | " + " | ".join(f"B = {b}" for b in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
    for scheme in schemes:
        one = tok.get((scheme, 1))
        cells = [f"{tok[scheme, b]:.1f}" + (f" ({tok[scheme, b] / one:.2f}×)" if one and b != 1 else "")
                 for b in sizes]
        lines.append(f"| {scheme} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _limit(r: dict) -> float:
    return r["read_gb_s"] * 1e9 / r["weight_bytes"]


def markdown(rows: list[dict]) -> str:
    """The README's table of ``cpu_decode.json``: speeds, bytes per token, and ratios to PyTorch
    fp32, llama.cpp Q4_0 (when measured) and the row's own bandwidth limit."""
    base = next(r["decode_tok_s"] for r in rows if r["engine"] == "pytorch-eager" and r["scheme"] == "fp32")
    q40 = next((r["decode_tok_s"] for r in rows if r["engine"] == "llama.cpp" and r["scheme"] == "Q4_0"), None)
    lines = ["| engine | scheme | prefill tok/s | decode tok/s | weights MB / token | decode GB/s "
             "| decode / own limit | decode × PyTorch fp32 | decode × llama.cpp Q4_0 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gbs = r["decode_tok_s"] * r["weight_bytes"] / 1e9
        vs_q40 = f"{r['decode_tok_s'] / q40:.2f}" if q40 else "–"
        lines.append(f"| {r['engine']} | {r['scheme']} | {r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.1f} | "
                     f"{r['weight_bytes'] / 1e6:.1f} | {gbs:.1f} | {r['decode_tok_s'] / _limit(r):.2f} | "
                     f"{r['decode_tok_s'] / base:.2f} | {vs_q40} |")
    lines.append(f"| read bandwidth (NumPy, same run) | {rows[0]['read_gb_s']:.1f} GB/s | | | | | 1.00 | | |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict]) -> str:
    """Decode tok/s per row with its bandwidth limit, as SVG; lowbit's fastest row highlighted."""
    from plot import Bar, bars_svg

    fastest = max((r for r in rows if r["engine"] == "lowbit-llvm"), key=lambda r: r["decode_tok_s"], default=None)
    bars = [Bar(f"{r['engine']} {r['scheme']}", r["decode_tok_s"], _limit(r), r is fastest) for r in rows]
    r0 = rows[0]
    title = (f"CPU decode, {r0['threads']} threads, {r0['prompt_tokens']}-token prompt, "
             f"{r0['new_tokens']} new tokens")
    return bars_svg(bars, title, "decode tok/s",
                    f"read bandwidth ({r0['read_gb_s']:.1f} GB/s) ÷ the row's weight bytes")


def print_batch(rows: list[BatchRow], single: dict[str, float]) -> None:
    """Write the batch rows and print them with their ratio to one sequence's ``decode``."""
    from lowbit.cache import atomic_file

    prov = record()
    with atomic_file(BATCH_RESULTS) as tmp:
        tmp.write_text(json.dumps([{**asdict(r), "provenance": prov} for r in rows], indent=2)
                       + "\n")
    print("\n| scheme | threads | batch | aggregate decode tok/s | vs one sequence's decode |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.scheme} | {r.threads} | {r.batch} | {r.decode_tok_s:.1f} | "
              f"{r.decode_tok_s / single[r.scheme]:.2f}× |")


if __name__ == "__main__":
    main()
