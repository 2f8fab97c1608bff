"""Continuous batching: many requests on one :class:`Engine`, stepped by one thread.

Each step admits waiting requests while sequence slots and KV pages allow, prefills one chunk
(at most the engine's ``prefill_chunk`` tokens) of the oldest request still prefilling, then runs
one decode step for every generating sequence together (``batch_decode``). New requests join
between steps, and a long prompt's prefill is interleaved with the running streams' decode steps,
so those never wait more than one chunk for their next token.

A request reserves KV pages for its whole prompt and token budget when it is admitted, so a
running request never runs out of pages. Finished sequences stay in a prefix cache (least
recently used first out) while their slots and pages are not needed: a new request forks the
cached sequence that shares the longest prefix of its prompt (a system prompt, an earlier turn)
and prefills only the rest.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from lowbit.errors import LowbitError
from lowbit.runtime.engine import PAGE_SIZE, Engine, Generation, GenerationConfig
from lowbit.runtime.logprobs import TokenLogprob, token_logprob
from lowbit.runtime.tokenizer import StreamDecoder


@dataclass(frozen=True)
class Request:
    """A prompt (token ids) and how to continue it; ``n`` independent choices share the prompt.
    ``prompt_logprobs``: score the prompt's tokens too, with this many top alternatives."""

    prompt: Sequence[int]
    config: GenerationConfig
    n: int = 1
    prompt_logprobs: int | None = None


@dataclass(frozen=True)
class Delta:
    """New text of choice ``index``; ``finish_reason`` is set on the choice's last delta."""

    index: int
    text: str
    finish_reason: str | None = None  # "stop", "length", "context" or "interrupted"
    logprobs: tuple[TokenLogprob, ...] = ()  # of the tokens behind ``text``, when asked for


@dataclass(frozen=True)
class PromptScores:
    """The prompt's tokens with their logprobs (the first has none), before any Delta."""

    logprobs: tuple[TokenLogprob, ...]


@dataclass
class Usage:
    """A finished request's token counts and timings (seconds, from its submission)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens reused from the prefix cache (not prefilled)
    completion_tokens: int = 0  # tokens sampled over all choices, stop tokens included
    queue_seconds: float = 0.0
    prefill_seconds: float = 0.0  # in this request's prefill chunks
    first_token_seconds: float = 0.0  # time to first token
    decode_seconds: float = 0.0  # first token → last token

    @property
    def prefill_tok_s(self) -> float:
        done = self.prompt_tokens - self.cached_tokens
        return done / self.prefill_seconds if self.prefill_seconds else 0.0

    choices: int = 1

    @property
    def decode_tok_s(self) -> float:
        """Tokens after each choice's first, per second of decoding."""
        n = self.completion_tokens - self.choices
        return n / self.decode_seconds if self.decode_seconds and n > 0 else 0.0

    def summary(self) -> str:
        return (f"prefill: {self.prompt_tokens - self.cached_tokens} tok ({self.cached_tokens} cached), "
                f"{self.prefill_tok_s:.1f} tok/s; decode: {self.completion_tokens} tok, "
                f"{self.decode_tok_s:.1f} tok/s; first token after {self.first_token_seconds:.3f} s")


@dataclass(frozen=True)
class Done:
    """The request's last event."""

    usage: Usage


@dataclass(frozen=True)
class Failed:
    """The request ended with an error (its sequences are freed); the engine keeps serving."""

    message: str


Event = Delta | PromptScores | Done | Failed


class QueueFull(LowbitError):
    """The waiting queue is full: retry later."""


class Refused(LowbitError):
    """A request that can never run; ``param`` names the request field at fault."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@dataclass
class _Choice:
    index: int
    gen: Generation
    seq_id: int = -1
    token: int = -1  # sampled, to be fed at the next decode step


@dataclass
class _Job:
    id: int
    request: Request
    emit: Callable[[Event], None]
    pages: int  # reserved
    submitted: float = field(default_factory=time.perf_counter)
    choices: list[_Choice] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)  # prompt tokens not prefilled yet
    usage: Usage = field(default_factory=Usage)
    cancelled: bool = False
    keep_prefix: bool = True  # when cancelled: cache its sequences instead of freeing them
    first_token: float = 0.0
    scores: list[TokenLogprob] = field(default_factory=list)  # prompt logprobs so far
    last_row: np.ndarray | None = None  # logits of the last prompt token scored
    decoder: StreamDecoder | None = None  # the prompt's text, token by token
    error: str = ""  # set when the job failed on its own (its grammar): retired with Failed

    @property
    def generating(self) -> list[_Choice]:
        return [c for c in self.choices if not c.gen.finish_reason] if not self.pending else []


@dataclass(frozen=True)
class Snapshot:
    """What the engine is doing, for metrics (read from any thread)."""

    running: int = 0
    queued: int = 0
    kv_pages_total: int = 0
    kv_pages_in_use: int = 0  # running requests' and the prefix cache's
    prefix_cache_sequences: int = 0
    prompt_tokens: int = 0  # totals since start: prefilled
    generated_tokens: int = 0  # sampled
    decode_tok_s: float = 0.0  # aggregate, of the last decode step
    prefill_tok_s: float = 0.0  # of the last prefill chunk


def pages_for(tokens: int) -> int:
    return -(-tokens // PAGE_SIZE)


class BatchEngine:
    """Runs requests on ``engine`` with continuous batching, on its own thread (:meth:`start`).

    ``max_running``: sequences generating at once (a request takes ``n``); the engine's
    ``max_batch_size`` beyond that is the prefix cache's. Events reach each request's ``emit``
    callback from the engine thread.
    """

    def __init__(self, engine: Engine, max_running: int, max_queue: int = 64):
        if not 1 <= max_running <= engine.max_batch_size:
            raise LowbitError(f"max_running must be in 1..{engine.max_batch_size}")
        self.engine, self.max_running, self.max_queue = engine, max_running, max_queue
        self._cond = threading.Condition()
        self._waiting: deque[_Job] = deque()
        self._running: list[_Job] = []
        self._cache: OrderedDict[int, None] = OrderedDict()  # finished sequences, oldest first
        self._ids = itertools.count()
        self._cancel: dict[int, bool] = {}  # job id → keep its prefix; applied between steps
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._drain = True
        # written by the engine thread only
        self._pages_in_use = 0
        self._prompt_tokens = self._generated_tokens = 0
        self._decode_tok_s = self._prefill_tok_s = 0.0

    # -- other threads --------------------------------------------------------------------------
    def check(self, request: Request) -> None:
        """Raise :class:`Refused` (one line) for a request that can never run."""
        e = self.engine
        if not request.prompt:
            raise Refused("the prompt is empty", "prompt")
        if len(request.prompt) >= e.context_window:
            raise Refused(f"the prompt has {len(request.prompt)} tokens; the context window is "
                          f"{e.context_window} tokens, including the reply", "prompt")
        if not 1 <= request.n <= self.max_running:
            raise Refused(f"n must be in 1..{self.max_running} (the engine's --max-batch)", "n")
        if self._reservation(request) > e.total_pages:
            raise Refused(f"the prompt and max tokens need {self._reservation(request)} KV pages "
                          f"of {PAGE_SIZE} tokens; the pool has {e.total_pages} "
                          "(--max-total-tokens)", "max_tokens")

    def submit(self, request: Request, emit: Callable[[Event], None]) -> int:
        """Queue ``request``; its id (for :meth:`cancel`). Raises :class:`QueueFull`."""
        self.check(request)
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting")
            job = _Job(next(self._ids), request, emit, self._reservation(request))
            job.pending = [int(t) for t in request.prompt]
            self._waiting.append(job)
            self._cond.notify()
        return job.id

    def cancel(self, job_id: int, keep_prefix: bool = False) -> None:
        """Stop a request between steps: its unfinished choices end as "interrupted". Its
        sequences are freed, or cached as a prefix with ``keep_prefix``."""
        with self._cond:
            self._cancel[job_id] = keep_prefix
            self._cond.notify()

    def snapshot(self) -> Snapshot:
        with self._cond:
            return Snapshot(
                running=len(self._running), queued=len(self._waiting),
                kv_pages_total=self.engine.total_pages, kv_pages_in_use=self._pages_in_use,
                prefix_cache_sequences=len(self._cache), prompt_tokens=self._prompt_tokens,
                generated_tokens=self._generated_tokens, decode_tok_s=self._decode_tok_s,
                prefill_tok_s=self._prefill_tok_s,
            )

    def stream(self, request: Request, should_stop: Callable[[], bool] | None = None,
               keep_prefix: bool = False) -> Iterator[Event]:
        """Submit ``request`` and yield its events here (``should_stop`` is polled)."""
        events: queue.Queue[Event] = queue.Queue()
        job_id, stopping = self.submit(request, events.put), False
        while True:
            if not stopping and should_stop is not None and should_stop():
                self.cancel(job_id, keep_prefix)
                stopping = True
            try:
                event = events.get(timeout=0.05)
            except queue.Empty:
                continue
            yield event
            if isinstance(event, Done | Failed):
                return

    def start(self) -> BatchEngine:
        self._thread = threading.Thread(target=self._loop, name="lowbit-engine", daemon=True)
        self._thread.start()
        return self

    def shutdown(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking requests; finish (``drain``) or interrupt the admitted and waiting ones."""
        with self._cond:
            self._stopping, self._drain = True, drain
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the engine thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._waiting or self._running or self._stopping):
                    self._cond.wait()
                if self._stopping and not self._drain:
                    self._cancel.update({j.id: False for j in (*self._waiting, *self._running)})
                for job in (*self._waiting, *self._running):
                    if job.id in self._cancel:
                        job.cancelled, job.keep_prefix = True, self._cancel[job.id]
                self._cancel.clear()
                if self._stopping and not self._running and not self._waiting:
                    return
            try:
                with self._cond:
                    self._admit()
                self._step()
            except Exception as e:  # noqa: BLE001 - a failed forward fails its requests, not the server
                self._fail_running(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            self._pages_in_use = self.engine.total_pages - self.engine.free_pages()

    def _reservation(self, request: Request) -> int:
        budget = min(request.config.max_new_tokens, self.engine.context_window - len(request.prompt))
        prompts = request.n if self._forks_copy() else 1
        return pages_for(prompts * len(request.prompt) + request.n * budget) + request.n + 1

    def _forks_copy(self) -> bool:
        """Whether a fork prefills its own copy of the prefix (:meth:`Engine.fork_sequence` for
        sliding-window models) instead of sharing the parent's pages: then no prefix is reused."""
        return self.engine.sliding_window > 0

    def _admit(self) -> None:
        """Move waiting jobs (in order) to running while slots and pages allow; cond held."""
        for job in [j for j in self._waiting if j.cancelled]:
            self._waiting.remove(job)
            self._finish(job)
        while self._waiting:
            job = self._waiting[0]
            slots = sum(j.request.n for j in self._running)
            pages = sum(j.pages for j in self._running)
            if slots + job.request.n > self.max_running or pages + job.pages > self.engine.total_pages:
                return
            self._running.append(self._waiting.popleft())
            self._start(job)

    def _start(self, job: _Job) -> None:
        """Give the job its first sequence, forked from the longest cached prefix of its prompt."""
        e, prompt = self.engine, job.pending
        job.usage = Usage(prompt_tokens=len(prompt), choices=job.request.n,
                          queue_seconds=time.perf_counter() - job.submitted)
        job.choices = [_Choice(i, e.generation(job.request.config, i)) for i in range(job.request.n)]
        scoring = job.request.prompt_logprobs is not None  # every prompt token is run, none reused
        reuse = not scoring and not self._forks_copy()
        parent, shared = self._longest_prefix(prompt) if reuse else (-1, 0)
        self._make_room(sequences=1, pages=0)
        if shared:
            self._cache.move_to_end(parent)
            job.choices[0].seq_id = e.fork_sequence(parent, length=shared)
        else:
            job.choices[0].seq_id = e.add_sequence()
        job.usage.cached_tokens = shared
        del job.pending[:shared]

    def _longest_prefix(self, prompt: list[int]) -> tuple[int, int]:
        """(cached sequence, tokens it shares with ``prompt``, at most all but the last)."""
        best, best_len = -1, 0
        for seq_id in self._cache:
            cached = self.engine.sequence_tokens(seq_id)
            n = min(len(cached), len(prompt) - 1)
            mismatch = np.flatnonzero(np.asarray(cached[:n]) != np.asarray(prompt[:n]))
            shared = int(mismatch[0]) if mismatch.size else n
            if shared > best_len:
                best, best_len = seq_id, shared
        return best, best_len

    def _make_room(self, sequences: int, pages: int) -> None:
        """Evict cached sequences (oldest first) until the engine has room."""
        e = self.engine
        while self._cache and (len(self._cache) + self._live_sequences() + sequences > e.max_batch_size
                               or e.free_pages() < pages):
            e.remove_sequence(self._cache.popitem(last=False)[0])

    def _live_sequences(self) -> int:
        return sum(1 for j in self._running for c in j.choices if c.seq_id >= 0)

    def _step(self) -> None:
        for job in [j for j in self._running if j.cancelled]:
            self._retire(job)
        prefilling = next((j for j in self._running if j.pending), None)
        if prefilling is not None:
            self._prefill_chunk(prefilling)
        choices = [c for j in self._running for c in j.generating]
        if choices:
            self._decode(choices)
        for job in [j for j in self._running if not j.pending and not j.generating]:
            self._retire(job)

    def _prefill_chunk(self, job: _Job) -> None:
        e, first = self.engine, job.choices[0]
        chunk = job.pending[: e.prefill_chunk]
        self._make_room(sequences=0, pages=pages_for(len(chunk)) + 1)
        t0 = time.perf_counter()
        if job.request.prompt_logprobs is None:
            logits = e.prefill(first.seq_id, chunk)
        else:
            rows = e.all_logits(first.seq_id, chunk)
            self._score(job, chunk, rows)
            logits = rows[-1]
        dt = time.perf_counter() - t0
        job.usage.prefill_seconds += dt
        del job.pending[: len(chunk)]
        self._prompt_tokens += len(chunk)
        self._prefill_tok_s = len(chunk) / dt if dt else 0.0
        if job.pending:
            return
        copies = len(job.choices) - 1 if self._forks_copy() else 0
        self._make_room(sequences=len(job.choices) - 1, pages=copies * (pages_for(len(job.request.prompt)) + 1))
        for choice in job.choices[1:]:
            choice.seq_id = e.fork_sequence(first.seq_id)
        if job.request.prompt_logprobs is not None:
            job.emit(PromptScores(tuple(job.scores)))
        job.first_token = time.perf_counter()
        job.usage.first_token_seconds = job.first_token - job.submitted
        for choice in job.choices:
            self._sample(job, choice, logits)

    def _score(self, job: _Job, chunk: list[int], rows: np.ndarray) -> None:
        """Each chunk token's logprob under the logits of the position before it."""
        e, top = self.engine, job.request.prompt_logprobs
        if not job.scores:
            job.decoder = StreamDecoder(e.tokenizer)
        for j, token in enumerate(chunk):
            text = job.decoder.push(token)
            prev = rows[j - 1] if j else job.last_row
            if prev is None:
                job.scores.append(TokenLogprob(token, text, e.grammars.token_bytes(token), None))
            else:
                job.scores.append(token_logprob(prev, token, text, top, e.grammars.token_bytes))
        job.last_row = rows[-1]

    def _decode(self, choices: list[_Choice]) -> None:
        e = self.engine
        self._make_room(sequences=0, pages=len(choices))
        t0 = time.perf_counter()
        if len(choices) == 1:
            logits = e.decode(choices[0].seq_id, choices[0].token)[None]
        else:
            logits = e.decode_batch([c.seq_id for c in choices], [c.token for c in choices])
        dt = time.perf_counter() - t0
        self._decode_tok_s = len(choices) / dt if dt else 0.0
        jobs = {id(c): j for j in self._running for c in j.choices}
        for choice, row in zip(choices, logits, strict=True):
            self._sample(jobs[id(choice)], choice, row)

    def _sample(self, job: _Job, choice: _Choice, logits: np.ndarray) -> None:
        e = self.engine
        history = e.sequence_tokens(choice.seq_id)
        try:
            choice.token, text = choice.gen.push(logits, history, e.context_window - len(history))
        except LowbitError as err:  # this request's grammar broke: it fails alone, at the next step
            job.error, job.cancelled, job.keep_prefix = str(err), True, False
            choice.gen.finish("interrupted")
            return
        self._generated_tokens += choice.token >= 0
        if choice.gen.finish_reason:
            text += choice.gen.flush()
            job.emit(Delta(choice.index, text, choice.gen.finish_reason, choice.gen.take_logprobs()))
        elif text:
            job.emit(Delta(choice.index, text, logprobs=choice.gen.take_logprobs()))

    def _retire(self, job: _Job) -> None:
        """End a running job: emit what is left, then cache or free its sequences."""
        self._running.remove(job)
        keep = not job.cancelled or job.keep_prefix
        for choice in job.choices:
            if choice.seq_id < 0:
                continue
            if keep:
                self._cache[choice.seq_id] = None
            else:
                self.engine.remove_sequence(choice.seq_id)
        while len(self._cache) > self.engine.max_batch_size - self.max_running:
            self.engine.remove_sequence(self._cache.popitem(last=False)[0])
        self._pages_in_use = self.engine.total_pages - self.engine.free_pages()
        self._finish(job)

    def _finish(self, job: _Job) -> None:
        if job.error:
            job.emit(Failed(job.error))
            return
        for choice in job.choices:
            if not choice.gen.finish_reason:
                choice.gen.finish("interrupted")
                text = choice.gen.flush()
                job.emit(Delta(choice.index, text, "interrupted", choice.gen.take_logprobs()))
        u = job.usage
        u.completion_tokens = sum(c.gen.sampled for c in job.choices)
        if job.first_token:
            u.decode_seconds = time.perf_counter() - job.first_token
        job.emit(Done(u))

    def _fail_running(self, message: str) -> None:
        for job in list(self._running):
            self._running.remove(job)
            for choice in job.choices:
                if choice.seq_id >= 0 and self.engine.has_sequence(choice.seq_id):
                    self.engine.remove_sequence(choice.seq_id)
            job.emit(Failed(message))
