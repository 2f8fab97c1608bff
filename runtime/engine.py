"""The engine: a compiled model library + its MLC weight folder, driven through the paged KV cache.

The library exports what MLC-LLM's llama model exports (``embed``, ``prefill``, ``decode``,
``create_paged_kv_cache``, ``_metadata``; params packed as the last argument). Each sequence's
tokens in the cache are tracked, so a new request for a sequence reuses the common prefix and
prefills only the rest, in chunks of at most ``prefill_chunk_size`` tokens. The KV cache is one
pool of :data:`PAGE_SIZE`-token pages shared by all sequences; forks share their parent's pages.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from lowbit.artifact import (
    METADATA_FUNC,
    LibraryMetadata,
    read_chat_config,
    read_tensor_cache_index,
)
from lowbit.errors import LowbitError
from lowbit.runtime.grammar import Grammars
from lowbit.runtime.library_check import check_library
from lowbit.runtime.logprobs import LogprobTrack, TokenLogprob
from lowbit.runtime.sampler import Sampler, SamplingParams
from lowbit.runtime.tokenizer import StreamDecoder, Tokenizer, load_chat_template
from lowbit.runtime.webgpu_runtime import load_for_library
from lowbit.runtime.weights import load_params

PAGE_SIZE = 16
THREADS_ENV = "TVM_NUM_THREADS"  # read by TVM when its CPU thread pool starts


def cpu_threads(requested: int | None = None) -> int:
    """Size TVM's CPU thread pool (the parallel kernels' threads): ``requested``, else
    $TVM_NUM_THREADS, else every CPU this process may run on; returns the count.

    TVM's own default halves the CPU count on x86-64, assuming two hyper-threads per core: on a
    machine without SMT that leaves half the cores idle. The pool reads the count when the
    process's first parallel kernel runs, so this is called before any (Engine does).
    """
    if requested is None:
        env = os.environ.get(THREADS_ENV, "")
        requested = int(env) if env.isdigit() and int(env) > 0 else _usable_cpus()
    os.environ[THREADS_ENV] = str(requested)
    return requested


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass(frozen=True)
class GenerationConfig:
    """What to generate: sampling, length and stop conditions (stop tokens are not emitted)."""

    max_new_tokens: int = 128
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop_strings: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    grammar: str | None = None  # compiled by :class:`Grammars`: the output must follow it
    logprobs: int | None = None  # report each token's logprob and this many top alternatives


@dataclass
class GenerationStats:
    prompt_tokens: int = 0  # tokens prefilled (after reusing the cached prefix)
    prompt_seconds: float = 0.0
    decode_tokens: int = 0  # tokens sampled
    decode_seconds: float = 0.0
    finish_reason: str = ""  # "stop", "length", "context" or "interrupted"
    tokens: list[int] = field(default_factory=list)  # sampled, the stop token included

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds else 0.0

    @property
    def decode_tok_s(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds else 0.0

    def summary(self) -> str:
        return (f"prefill: {self.prompt_tokens} tok, {self.prefill_tok_s:.1f} tok/s; "
                f"decode: {self.decode_tokens} tok, {self.decode_tok_s:.1f} tok/s")


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list | tuple) else [int(value)]


class Engine:
    """Loads weights once and runs sequences on the device the library was built for."""

    def __init__(self, model_dir: Path, model_lib: Path, *, max_batch_size: int = 1,
                 context_window: int | None = None, max_total_tokens: int | None = None,
                 prefill_chunk: int | None = None, check_md5: bool = True):
        """``max_batch_size``: sequences held at once; ``max_total_tokens``: the KV pool (default
        one context window per sequence); ``prefill_chunk``: at most the library's chunk size."""
        import tvm
        from tvm.runtime.vm import VirtualMachine

        self.threads = cpu_threads()
        self.model_dir, lib = Path(model_dir), Path(model_lib)
        self.chat_config = read_chat_config(self.model_dir)
        self.cache_index = read_tensor_cache_index(self.model_dir)
        library = _load_library(lib)
        cpu_vm = VirtualMachine(library, tvm.cpu())  # the metadata function is host code
        self.metadata = _library_metadata(cpu_vm, lib)
        self.device = _open_device(self.metadata.device if self.metadata else "cpu", lib)
        on_cpu = self.device.dlpack_device_type() == tvm.cpu().dlpack_device_type()
        self.vm = cpu_vm if on_cpu else VirtualMachine(library, self.device)
        if self.metadata is None:  # not built by lowbit: trust the folder's order
            names = list(self.cache_index.records)
        else:
            self.metadata.check_chat_config(self.chat_config, lib.name, self.model_dir)
            names = self.metadata.param_names(self.cache_index, lib.name)
        self.params = load_params(self.cache_index, names, self.device, check_md5)
        md = self.metadata
        limit = int(md.context_window_size if md else self.chat_config["context_window_size"])
        self.context_window = min(context_window or limit, limit)
        library_chunk = int(md.prefill_chunk_size if md else self.chat_config["prefill_chunk_size"])
        self.prefill_chunk = min(prefill_chunk or library_chunk, library_chunk)
        if self.prefill_chunk < 1 or max_batch_size < 1 or (max_total_tokens or 1) < 1:
            raise LowbitError("the prefill chunk, batch size and KV pool must be positive")
        self.max_batch_size = max_batch_size
        self.sliding_window = int((md.config if md else {}).get("sliding_window_size", -1))
        self.max_total_tokens = max_total_tokens or self.context_window * max_batch_size
        shape = tvm.runtime.ShapeTuple
        self.kv = self.vm["create_paged_kv_cache"](
            shape([max_batch_size]), shape([self.max_total_tokens]),
            shape([library_chunk]), shape([PAGE_SIZE]), shape([0]),
        )
        self._f = {name: tvm.get_global_func(f"vm.builtin.{name}") for name in (
            "kv_state_add_sequence", "kv_state_remove_sequence", "kv_state_fork_sequence",
            "kv_state_popn", "kv_state_begin_forward", "kv_state_end_forward",
            "attention_kv_cache_get_num_available_pages")}
        self.total_pages = self.free_pages()
        self._tokens: dict[int, list[int]] = {}  # sequence id → tokens in the KV cache
        self.last_stats = GenerationStats()

    @cached_property
    def tokenizer(self) -> Tokenizer:
        """Loaded on first use: scoring token ids (perplexity) needs no tokenizer files."""
        return Tokenizer(self.model_dir)

    @cached_property
    def grammars(self) -> Grammars:
        """Constrained decoding and token bytes (llguidance's tokenizer, built on first use)."""
        return Grammars(self.tokenizer.to_json(), self.vocab_size, self.default_stop_token_ids())

    @property
    def vocab_size(self) -> int:
        """The logits' width (``vocab_size`` of the chat config, else of its ``model_config``)."""
        cfg = self.chat_config
        size = cfg.get("vocab_size") or cfg["model_config"].get("vocab_size")
        if not size:
            raise LowbitError(f"{self.model_dir / 'mlc-chat-config.json'} has no vocab_size")
        return int(size)

    @cached_property
    def template(self):
        return load_chat_template(self.model_dir, self.tokenizer, self.chat_config)

    # -- sequences ------------------------------------------------------------------------------
    def add_sequence(self, seq_id: int | None = None) -> int:
        seq_id = self._new_id() if seq_id is None else seq_id
        if seq_id in self._tokens:
            raise LowbitError(f"sequence {seq_id} already exists")
        if len(self._tokens) >= self.max_batch_size:
            raise LowbitError(f"the engine holds at most {self.max_batch_size} sequences")
        self._f["kv_state_add_sequence"](self.kv, seq_id)
        self._tokens[seq_id] = []
        return seq_id

    def fork_sequence(self, parent: int, seq_id: int | None = None, length: int | None = None) -> int:
        """A new sequence sharing the first ``length`` (default all) of ``parent``'s cached tokens
        (whole pages are shared, not copied)."""
        seq_id = self._new_id() if seq_id is None else seq_id
        if len(self._tokens) >= self.max_batch_size:
            raise LowbitError(f"the engine holds at most {self.max_batch_size} sequences")
        cached = self._tokens[self._known(parent)]
        length = len(cached) if length is None else length
        if not 0 < length <= len(cached):
            raise LowbitError(f"cannot fork {length} of sequence {parent}'s {len(cached)} tokens")
        if self.sliding_window > 0:
            # The KV cache windows each shared block of a fork on its own, which lets the child
            # see past its window: the child gets its own copy of the prefix instead.
            self.add_sequence(seq_id)
            self.prefill(seq_id, cached[:length])
            return seq_id
        self._f["kv_state_fork_sequence"](self.kv, parent, seq_id, -1 if length == len(cached) else length)
        self._tokens[seq_id] = cached[:length]
        return seq_id

    def remove_sequence(self, seq_id: int) -> None:
        self._f["kv_state_remove_sequence"](self.kv, self._known(seq_id))
        del self._tokens[seq_id]

    def free_pages(self) -> int:
        """KV pages no sequence holds."""
        return int(self._f["attention_kv_cache_get_num_available_pages"](self.kv))

    def has_sequence(self, seq_id: int) -> bool:
        return seq_id in self._tokens

    def sequence_tokens(self, seq_id: int) -> list[int]:
        return list(self._tokens[self._known(seq_id)])

    def _known(self, seq_id: int) -> int:
        if seq_id not in self._tokens:
            raise LowbitError(f"unknown sequence {seq_id}")
        return seq_id

    def _new_id(self) -> int:
        return max(self._tokens, default=-1) + 1

    # -- forward passes -------------------------------------------------------------------------
    def _forward(self, fn: str, seq_id: int, ids: Sequence[int]) -> np.ndarray:
        import tvm

        ids_t = tvm.runtime.tensor(np.asarray(ids, dtype=np.int32), self.device)
        emb = self.vm["embed"](ids_t, self.params)
        emb = emb._create_view((1, len(ids), emb.shape[-1]))
        self._f["kv_state_begin_forward"](self.kv, tvm.runtime.ShapeTuple([seq_id]),
                                          tvm.runtime.ShapeTuple([len(ids)]))
        try:
            out = self.vm[fn](emb, self.kv, self.params)
        finally:
            self._f["kv_state_end_forward"](self.kv)
        self._tokens[seq_id].extend(int(t) for t in ids)
        return out[0].numpy()[0]

    def decode_batch(self, seq_ids: Sequence[int], tokens: Sequence[int]) -> np.ndarray:
        """Append one token to each sequence in one ``batch_decode`` call; logits [n, vocab]."""
        import tvm

        if len(seq_ids) != len(tokens) or len(set(seq_ids)) != len(seq_ids):
            raise LowbitError("decode_batch needs one token per distinct sequence")
        for seq_id in seq_ids:
            self._check_room(self._known(seq_id), 1)
        ids_t = tvm.runtime.tensor(np.asarray(tokens, dtype=np.int32), self.device)
        emb = self.vm["embed"](ids_t, self.params)
        emb = emb._create_view((len(tokens), 1, emb.shape[-1]))
        shape = tvm.runtime.ShapeTuple
        self._f["kv_state_begin_forward"](self.kv, shape(list(seq_ids)), shape([1] * len(seq_ids)))
        try:
            out = self.vm["batch_decode"](emb, self.kv, self.params)
        finally:
            self._f["kv_state_end_forward"](self.kv)
        for seq_id, token in zip(seq_ids, tokens, strict=True):
            self._tokens[seq_id].append(int(token))
        return out[0].numpy().reshape(len(tokens), -1)

    def prefill(self, seq_id: int, ids: Sequence[int],
                progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Append ``ids`` to the sequence in chunks; the last position's logits. ``progress``
        is called with each chunk's token count as it finishes."""
        return self._prefill_chunks("prefill", seq_id, ids, progress)[-1][-1]

    def all_logits(self, seq_id: int, ids: Sequence[int]) -> np.ndarray:
        """Append ``ids`` to the sequence in chunks; the logits of every position [len(ids), vocab]
        (the library's ``prefill_all_logits``, for scoring)."""
        return np.concatenate(self._prefill_chunks("prefill_all_logits", seq_id, ids))

    def _prefill_chunks(self, fn: str, seq_id: int, ids: Sequence[int],
                        progress: Callable[[int], None] | None = None) -> list[np.ndarray]:
        self._known(seq_id)
        if not ids:
            raise LowbitError("prefill needs at least one token")
        self._check_room(seq_id, len(ids))
        out = []
        for start in range(0, len(ids), self.prefill_chunk):
            chunk = ids[start : start + self.prefill_chunk]
            out.append(self._forward(fn, seq_id, chunk))
            if progress is not None:
                progress(len(chunk))
        return out

    def decode(self, seq_id: int, token: int) -> np.ndarray:
        """Append one token; its logits."""
        self._check_room(self._known(seq_id), 1)
        return self._forward("decode", seq_id, [token])[-1]

    def rewind(self, seq_id: int, length: int) -> None:
        """Drop cached tokens so that ``length`` remain."""
        n = len(self._tokens[self._known(seq_id)]) - length
        if n > 0:
            self._f["kv_state_popn"](self.kv, seq_id, n)
            del self._tokens[seq_id][length:]

    def _check_room(self, seq_id: int, n: int) -> None:
        total = len(self._tokens[seq_id]) + n
        if total > self.context_window:
            raise LowbitError(f"{total} tokens exceed the context window of {self.context_window}")

    # -- generation -----------------------------------------------------------------------------
    def sampling_params(self, temperature: float | None = None, top_p: float | None = None,
                        top_k: int = 0, repetition_penalty: float | None = None,
                        seed: int | None = None, **penalties) -> SamplingParams:
        """The given sampling, the rest from ``mlc-chat-config.json`` (as mlc_llm does);
        ``penalties``: ``presence_penalty``, ``frequency_penalty``, ``logit_bias``."""
        cfg = self.chat_config

        def pick(value: float | None, key: str, fallback: float) -> float:
            if value is not None:
                return float(value)
            return float(cfg[key]) if cfg.get(key) is not None else fallback

        return SamplingParams(temperature=pick(temperature, "temperature", 0.0),
                              top_p=pick(top_p, "top_p", 1.0), top_k=top_k,
                              repetition_penalty=pick(repetition_penalty, "repetition_penalty", 1.0),
                              seed=seed, **penalties)

    def chat_prompt_ids(self, messages: Sequence[dict], tools: list[dict] | None = None) -> list[int]:
        """The token ids of a chat rendered by the folder's template, the assistant's turn next."""
        text = self.template.render(messages, tools=tools) if tools else self.template.render(messages)
        return self.template.prefix_ids + self.tokenizer.encode(text, add_special_tokens=False)

    def chat_stop_strings(self) -> list[str]:
        """The stop strings of the folder's ``conv_template`` (for chat-formatted prompts)."""
        conv = self.chat_config.get("conv_template")
        return list(conv.get("stop_str") or []) if isinstance(conv, dict) else []

    def default_stop_token_ids(self) -> tuple[int, ...]:
        ids = _as_list(self.chat_config.get("eos_token_id"))
        conv = self.chat_config.get("conv_template")
        if isinstance(conv, dict):
            ids += _as_list(conv.get("stop_token_ids"))
        eos = self.tokenizer.special_token("eos_token")
        if eos is not None and self.tokenizer.token_id(eos) is not None:
            ids.append(self.tokenizer.token_id(eos))
        return tuple(dict.fromkeys(ids))

    def generation(self, config: GenerationConfig, seed_offset: int = 0) -> Generation:
        """A sequence's sampler and detokenizer for ``config`` (choice ``seed_offset`` of n)."""
        needs_grammars = config.grammar is not None or config.logprobs is not None
        return Generation(self.tokenizer, config, seed_offset, self.grammars if needs_grammars else None)

    def generate(self, ids: Sequence[int], config: GenerationConfig, seq_id: int = 0,
                 should_stop: Callable[[], bool] | None = None,
                 prefill_progress: Callable[[int], Callable[[int], None] | None] | None = None) -> Iterator[str]:
        """Stream the text generated after ``ids`` (the sequence's whole context) as deltas.

        The sequence is created if needed; tokens it already caches that agree with ``ids`` are
        reused. ``self.last_stats`` is filled in as it goes. ``should_stop`` is polled between
        tokens (interrupting never leaves the KV cache mid-step). ``prefill_progress(n)``, given
        the number of tokens to prefill, may return a callback for :meth:`prefill`.
        """
        ids = [int(t) for t in ids]
        if not ids:
            raise LowbitError("the prompt is empty")
        if len(ids) >= self.context_window:
            raise LowbitError(f"prompt of {len(ids)} tokens does not fit the context window of "
                              f"{self.context_window} tokens")
        if seq_id not in self._tokens:
            self.add_sequence(seq_id)
        cached = self._tokens[seq_id]
        same = (i for i, (a, b) in enumerate(zip(cached, ids, strict=False)) if a != b)
        keep = next(same, min(len(cached), len(ids)))  # length of the common prefix
        self.rewind(seq_id, min(keep, len(ids) - 1))  # at least one token to prefill, for logits
        stats = self.last_stats = GenerationStats()
        new = ids[len(self._tokens[seq_id]) :]
        t0 = time.perf_counter()
        logits = self.prefill(seq_id, new, prefill_progress(len(new)) if prefill_progress else None)
        stats.prompt_tokens, stats.prompt_seconds = len(new), time.perf_counter() - t0
        yield from self._decode_loop(seq_id, logits, config, stats, should_stop)

    def _decode_loop(self, seq_id: int, logits: np.ndarray, config: GenerationConfig,
                     stats: GenerationStats, should_stop: Callable[[], bool] | None) -> Iterator[str]:
        gen = self.generation(config)
        t0 = time.perf_counter()
        while True:
            if should_stop is not None and should_stop():
                gen.finish("interrupted")
            else:
                room = self.context_window - len(self._tokens[seq_id])
                token, text = gen.push(logits, self._tokens[seq_id], room)
                if text:
                    yield text
            if gen.finish_reason:
                break
            logits = self.decode(seq_id, token)
        stats.decode_tokens, stats.finish_reason, stats.tokens = gen.sampled, gen.finish_reason, gen.tokens
        stats.decode_seconds = time.perf_counter() - t0
        if rest := gen.flush():
            yield rest


class Generation:
    """One sequence's generation: samples each next token (within the grammar, if any) and turns
    it into text, stopping on a stop token (not emitted), a stop string (cut before it), the token
    budget or the context. ``grammars`` is needed for a grammar or logprobs."""

    def __init__(self, tokenizer: Tokenizer, config: GenerationConfig, seed_offset: int = 0,
                 grammars: Grammars | None = None):
        params = config.sampling
        if seed_offset and params.seed is not None:  # n > 1: each choice draws its own stream
            params = replace(params, seed=params.seed + seed_offset)
        self.config, self.sampler = config, Sampler(params)
        self.stream, self.stops = StreamDecoder(tokenizer), StopStrings(config.stop_strings)
        self.stop_ids = set(config.stop_token_ids)
        if (config.grammar is not None or config.logprobs is not None) and grammars is None:
            raise LowbitError("a grammar or logprobs needs the engine's grammars")
        self.constraint = grammars.constraint(config.grammar) if config.grammar is not None else None
        self.logprobs = (LogprobTrack(config.logprobs, grammars.token_bytes)
                         if config.logprobs is not None else None)
        self.tokens: list[int] = []  # sampled, the stop token included
        self.finish_reason = ""  # "stop", "length", "context" or "interrupted" once finished

    def push(self, logits: np.ndarray, history: Sequence[int], room: int) -> tuple[int, str]:
        """Sample from ``logits`` (``history``: the tokens so far, ``room``: KV slots left);
        (the token to feed next, the text that may be emitted now). A zero token budget
        finishes at once ("length") without sampling."""
        if self.config.max_new_tokens < 1:
            self.finish_reason = "length"
            return -1, ""
        token = self.sampler(logits, history, self.constraint.allowed() if self.constraint else None)
        self.tokens.append(token)
        if self.constraint is not None:
            self.constraint.accept(token)
        if token in self.stop_ids:
            self.finish_reason = "stop"
            return token, ""
        piece = self.stream.push(token)
        if self.logprobs is not None:
            self.logprobs.add(logits, token, piece)
        text, hit = self.stops.push(piece)
        if hit:
            self.finish_reason = "stop"
        elif self.sampled >= self.config.max_new_tokens:
            self.finish_reason = "length"
        elif room < 1:
            self.finish_reason = "context"
        return token, text

    @property
    def sampled(self) -> int:
        return len(self.tokens)

    def finish(self, reason: str) -> None:
        self.finish_reason = self.finish_reason or reason

    def flush(self) -> str:
        """Text held back as a possible stop string's start, once finished other than by one."""
        return "" if self.finish_reason == "stop" else self.stops.flush()

    def take_logprobs(self) -> tuple[TokenLogprob, ...]:
        """The logprobs of the tokens behind the text emitted since the last call."""
        if self.logprobs is None:
            return ()
        return self.logprobs.release(self.stops.emitted, final=bool(self.finish_reason))


def _load_library(path: Path):
    import tvm

    check_library(path)  # a damaged library would crash the loader (SIGBUS), not raise
    load_for_library(path)  # WGSL kernels need lowbit's WebGPU runtime
    try:
        return tvm.runtime.load_module(str(path))
    except Exception as e:  # TVM raises its own error types
        raise LowbitError(f"cannot load model library {path}: {str(e).splitlines()[0]}") from None


def _library_metadata(vm, path: Path) -> LibraryMetadata | None:
    """The library's metadata (None for a library lowbit did not build)."""
    try:
        fn = vm[METADATA_FUNC]
    except Exception:  # noqa: BLE001 - no such function
        return None
    try:
        return LibraryMetadata.from_json(str(fn()))
    except (ValueError, TypeError) as e:
        raise LowbitError(f"model library {path} has unreadable metadata: {e}") from None


def _open_device(name: str, lib: Path):
    """The TVM device ``name`` (device 0), or a one-line error when this machine lacks it."""
    import tvm

    try:
        device = tvm.runtime.device(name, 0)
        present = device.exist
    except Exception:  # noqa: BLE001 - runtime built without that device API
        present = False
    if not present:
        raise LowbitError(f"model library {lib.name} runs on {name}, which this machine's TVM "
                          f"runtime cannot open (compile for a target this machine has, e.g. llvm)")
    return device


class StopStrings:
    """Holds back text that may be the start of a stop string; cuts the output at the first one."""

    def __init__(self, stop_strings: Sequence[str]):
        self.stops = [s for s in stop_strings if s]
        self.text = ""
        self.emitted = 0

    def push(self, delta: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop string was reached)."""
        self.text += delta
        hits = [i for i in (self.text.find(s, max(0, self.emitted - len(s))) for s in self.stops) if i >= 0]
        if hits:
            end = min(hits)
            out, self.emitted = self.text[self.emitted : end], max(self.emitted, end)
            return out, True
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        end = max(self.emitted, len(self.text) - hold)
        out, self.emitted = self.text[self.emitted : end], end
        return out, False

    def flush(self) -> str:
        out, self.emitted = self.text[self.emitted :], len(self.text)
        return out
