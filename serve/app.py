"""The OpenAI-compatible REST app (FastAPI) over one :class:`BatchEngine`.

Endpoints as ``mlc_llm serve`` has them: ``POST /v1/chat/completions``, ``POST /v1/completions``
(both streamed as server-sent events with ``stream: true``), ``GET /v1/models``, ``GET /health``
(503 while the model loads) and Prometheus ``GET /metrics``. Errors take OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lowbit.errors import LowbitError
from lowbit.runtime.batching import (
    BatchEngine,
    Delta,
    Done,
    Event,
    Failed,
    PromptScores,
    QueueFull,
    Refused,
)
from lowbit.runtime.batching import Request as EngineRequest
from lowbit.runtime.batching import Usage as EngineUsage
from lowbit.runtime.engine import GenerationConfig
from lowbit.runtime.grammar import GrammarError
from lowbit.runtime.logprobs import TokenLogprob
from lowbit.serve import protocol as p
from lowbit.serve import tools
from lowbit.serve.metrics import Metrics

FINISH_REASONS = {"stop": "stop", "length": "length", "context": "length", "interrupted": "abort"}


@dataclass
class ServeArgs:
    """``lowbit serve``'s options."""

    model_dir: Path
    model_lib: Path
    host: str = "127.0.0.1"
    port: int = 8000
    model_id: str | None = None
    max_batch: int = 8  # sequences generating at once
    max_total_tokens: int = 16384  # the KV pool, in tokens
    prefill_chunk: int = 256
    max_queue: int = 64
    api_key: str | None = None
    context_window: int | None = None
    max_body_bytes: int = 8 << 20

    @property
    def served_id(self) -> str:
        return self.model_id or Path(self.model_dir).name


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        body = p.ErrorResponse(error=p.ErrorDetail(message=self.message, type=self.type,
                                                   param=self.param, code=self.code))
        return JSONResponse(body.model_dump(), status_code=self.status, headers=self.headers)


def _validation_error(exc: RequestValidationError) -> APIError:
    """The first pydantic error as one OpenAI-style 400, naming the field."""
    err = exc.errors()[0]
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    kind = err.get("type", "")
    if kind == "json_invalid":
        return APIError(400, f"the body is not valid JSON: {err.get('ctx', {}).get('error', err['msg'])}",
                        code="invalid_json")
    if kind == "not_supported":
        field = err["ctx"]["field"]
        return APIError(400, f"{field} is not supported yet", param=field, code="unsupported_parameter")
    param = ".".join(loc) or None
    if kind == "extra_forbidden":
        return APIError(400, f"unrecognized request argument: {param}", param=param,
                        code="unknown_parameter")
    if kind == "missing":
        return APIError(400, f"missing required field: {param}", param=param, code="missing_parameter")
    return APIError(400, f"{param}: {err['msg']}" if param else err["msg"], param=param,
                    code="invalid_value")


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit`` bytes (declared or streamed)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        too_big = APIError(413, f"the request body exceeds {self.limit} bytes", code="body_too_large")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await too_big.response()(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await too_big.response()(scope, receive, send)


class _TooLarge(Exception):
    pass


class Server:
    """The loaded model (in the background) and what the endpoints need from it."""

    def __init__(self, args: ServeArgs, on_load_error: Callable[[str], None] | None = None):
        self.args, self.on_load_error = args, on_load_error
        self.batch: BatchEngine | None = None
        self.load_error: str | None = None
        self.created = int(time.time())
        self.metrics = Metrics(lambda: self.batch.snapshot() if self.batch else None)

    def load(self) -> None:
        """Open the engine (weights, KV pool) and start batching; runs on a thread."""
        from lowbit.runtime.engine import Engine

        a = self.args
        try:
            engine = Engine(a.model_dir, a.model_lib, max_batch_size=2 * a.max_batch,
                            context_window=a.context_window, max_total_tokens=a.max_total_tokens,
                            prefill_chunk=a.prefill_chunk)
            engine.template  # noqa: B018 - load the tokenizer and template now, not on the first request
            engine.grammars  # noqa: B018 - and llguidance's tokenizer (~0.5 s)
            self.stop_ids = engine.default_stop_token_ids()
            self.batch = BatchEngine(engine, a.max_batch, a.max_queue).start()
        except LowbitError as e:
            self.load_error = str(e)
        except Exception as e:  # noqa: BLE001 - any loading failure ends the server with one line
            self.load_error = f"{type(e).__name__}: {e}"
        if self.load_error and self.on_load_error:
            self.on_load_error(self.load_error)

    def ready(self) -> BatchEngine:
        if self.batch is None:
            raise APIError(503, "the model is still loading", "service_unavailable",
                           code="loading", headers={"Retry-After": "2"})
        return self.batch

    def check_model(self, model: str | None) -> str:
        if model not in (None, "", self.args.served_id):
            raise APIError(404, f"model {model!r} is not served here (this server serves "
                           f"{self.args.served_id!r})", param="model", code="model_not_found")
        return self.args.served_id

    def generation(self, req: p.ChatCompletionRequest | p.CompletionRequest, prompt_len: int,
                   extra_stops: list[str]) -> GenerationConfig:
        """Sampling from the request, else from ``mlc-chat-config.json`` (as mlc_llm does)."""
        engine = self.ready().engine
        bad = [t for t, _ in req.bias if t >= engine.vocab_size]
        if bad:
            raise APIError(400, f"logit_bias: token id {bad[0]} is outside the vocabulary of "
                           f"{engine.vocab_size}", param="logit_bias", code="invalid_value")
        sampling = engine.sampling_params(req.temperature, req.top_p, seed=req.seed,
                                          presence_penalty=req.presence_penalty,
                                          frequency_penalty=req.frequency_penalty, logit_bias=req.bias)
        budget = req.token_budget
        if budget is None:
            budget = max(engine.context_window - prompt_len, 1)
        stops = tuple(dict.fromkeys([*req.stop, *extra_stops]))
        return GenerationConfig(budget, sampling, stops, self.stop_ids, self.grammar(req), req.top_count)

    def grammar(self, req: p.ChatCompletionRequest | p.CompletionRequest) -> str | None:
        """The compiled grammar the output must follow: a forced tool call, or the response format."""
        grammars = self.ready().engine.grammars
        forced = isinstance(req, p.ChatCompletionRequest) and req.uses_tools and req.tool_choice not in (None, "auto")
        try:
            if forced:
                return grammars.lark(tools.forced_call_grammar(req.tools, req.tool_choice, req.parallel_tool_calls))
            fmt = req.response_format
            if fmt is None or fmt.type == "text":
                return None
            if fmt.type == "json_object":
                return grammars.json_schema(None)
            return grammars.json_schema(fmt.json_schema.json_schema or {})
        except GrammarError as e:
            param = "tools" if forced else "response_format"
            raise APIError(400, f"{param}: {e}", param=param, code="invalid_value") from None


def _usage(u: EngineUsage) -> p.Usage:
    return p.Usage(
        prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
        total_tokens=u.prompt_tokens + u.completion_tokens,
        prompt_tokens_details=p.PromptTokensDetails(cached_tokens=u.cached_tokens),
        extra=p.UsageExtra(prefill_tokens_per_s=round(u.prefill_tok_s, 3),
                           decode_tokens_per_s=round(u.decode_tok_s, 3),
                           ttft_s=round(u.first_token_seconds, 4), queue_s=round(u.queue_seconds, 4)),
    )


class Run:
    """One HTTP request's run on the engine: submits, relays events, cancels on disconnect."""

    def __init__(self, server: Server, request: EngineRequest, http: Request):
        self.server, self.http = server, http
        self.batch = server.ready()
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        try:
            self.job = self.batch.submit(request, lambda ev: loop.call_soon_threadsafe(self.events.put_nowait, ev))
        except QueueFull as e:
            raise APIError(503, f"{e}; retry later", "service_unavailable", code="queue_full",
                           headers={"Retry-After": "1"}) from None
        except Refused as e:
            code = "context_length_exceeded" if e.param == "prompt" else "invalid_value"
            raise APIError(400, str(e), param=e.param, code=code) from None

    async def events_until_done(self) -> AsyncIterator[Event]:
        """The events, ending with Done; cancels the job if the client goes away first."""
        finished = False
        try:
            while True:
                try:
                    event = await asyncio.wait_for(self.events.get(), timeout=0.5)
                except TimeoutError:
                    if await self.http.is_disconnected():
                        return
                    continue
                if isinstance(event, Failed):
                    finished = True
                    raise APIError(500, f"generation failed: {event.message}", "server_error",
                                   code="engine_error")
                yield event
                if isinstance(event, Done):
                    finished = True
                    self.server.metrics.ttft.observe(event.usage.first_token_seconds)
                    self.server.metrics.latency.observe(event.usage.first_token_seconds
                                                        + event.usage.decode_seconds)
                    return
        finally:
            if not finished:
                self.batch.cancel(self.job)


def _sse(model: p.BaseModel | str) -> str:
    data = model if isinstance(model, str) else model.model_dump_json()
    return f"data: {data}\n\n"


def create_app(args: ServeArgs, on_load_error: Callable[[str], None] | None = None) -> FastAPI:
    """The app; the model loads on a thread when the app starts (``/health`` says when)."""
    server = Server(args, on_load_error)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=server.load, name="lowbit-load", daemon=True).start()
        yield
        if server.batch is not None:  # in-flight requests have drained by now (uvicorn waits)
            await asyncio.to_thread(server.batch.shutdown, True)

    app = FastAPI(title="lowbit", version="1", lifespan=lifespan)
    app.state.server = server
    app.add_middleware(BodyLimit, limit=args.max_body_bytes)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error").response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return _validation_error(exc).response()

    @app.middleware("http")
    async def count(request: Request, call_next):
        response = await call_next(request)
        server.metrics.requests.labels(request.url.path, str(response.status_code)).inc()
        return response

    async def authorized(request: Request) -> None:
        if args.api_key and request.headers.get("authorization") != f"Bearer {args.api_key}":
            raise APIError(401, "missing or wrong API key (Authorization: Bearer KEY)",
                           "authentication_error", code="invalid_api_key")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorized)])

    @v1.get("/models")
    async def models() -> p.ModelList:
        return p.ModelList(data=[p.ModelCard(id=args.served_id, created=server.created)])

    @v1.post("/chat/completions", response_model=None)
    async def chat_completions(req: p.ChatCompletionRequest, http: Request):
        model = server.check_model(req.model)
        engine = server.ready().engine
        if req.tools:
            try:
                tools.check_template(engine.template)
            except tools.ToolsNotSupported as e:
                raise APIError(400, str(e), param="tools", code="unsupported_parameter") from None
        try:
            ids = engine.chat_prompt_ids([_template_message(m) for m in req.messages],
                                         tools=[t.model_dump(exclude_none=True) for t in req.tools or []])
        except Exception as e:  # noqa: BLE001 - the model's own template refused the conversation
            raise APIError(400, f"the chat template refused the messages: {e}", param="messages") from None
        run = Run(server, EngineRequest(ids, server.generation(req, len(ids), engine.chat_stop_strings()),
                                        req.n), http)
        rid = p.new_id("chatcmpl")
        if req.stream:
            return StreamingResponse(_chat_stream(run, rid, model, req), media_type="text/event-stream")
        out = await _collect(run, req.n)
        if out.usage is None:  # the client went away
            return Response(status_code=499)
        choices = [_chat_choice(req, i, out.texts[i], out.reasons[i], out.logprobs[i]) for i in range(req.n)]
        return p.ChatCompletion(id=rid, model=model, choices=choices, usage=out.usage)

    @v1.post("/completions", response_model=None)
    async def completions(req: p.CompletionRequest, http: Request):
        model = server.check_model(req.model)
        engine = server.ready().engine
        if isinstance(req.prompt, str):
            ids = engine.tokenizer.encode(req.prompt)
        else:
            bad = [t for t in req.prompt if not 0 <= t < engine.vocab_size]
            if bad:
                raise APIError(400, f"prompt: token id {bad[0]} is outside the vocabulary", param="prompt")
            ids = list(req.prompt)
        scoring = req.echo and req.logprobs is not None  # the prompt's tokens get logprobs too
        run = Run(server, EngineRequest(ids, server.generation(req, len(ids), []), req.n,
                                        req.logprobs if scoring else None), http)
        echo = None  # the echoed prompt when it is not scored (scored: the scored tokens' text)
        if req.echo and not scoring:
            echo = req.prompt if isinstance(req.prompt, str) else engine.tokenizer.decode(ids)
        rid = p.new_id("cmpl")
        if req.stream:
            return StreamingResponse(_completion_stream(run, rid, model, req, echo),
                                     media_type="text/event-stream")
        out = await _collect(run, req.n)
        if out.usage is None:
            return Response(status_code=499)
        echoed = "".join(e.text for e in out.prompt) if scoring else echo or ""
        choices = [p.CompletionChoice(
            index=i, text=echoed + out.texts[i], finish_reason=out.reasons[i],
            logprobs=None if req.logprobs is None else _completion_logprobs([*out.prompt, *out.logprobs[i]], 0),
        ) for i in range(req.n)]
        return p.Completion(id=rid, model=model, choices=choices, usage=out.usage)

    app.include_router(v1)

    @app.get("/health")
    async def health():
        if server.load_error:
            return JSONResponse({"status": "failed", "error": server.load_error}, status_code=503)
        if server.batch is None:
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "2"})
        return {"status": "ok", "model": args.served_id}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


@dataclass
class _Outcome:
    """A whole run: each choice's text, finish reason and logprobs; the prompt's scores; usage."""

    texts: list[str]
    reasons: list[str | None]
    logprobs: list[list[TokenLogprob]]
    prompt: tuple[TokenLogprob, ...] = ()
    usage: p.Usage | None = None  # None: the client went away


async def _collect(run: Run, n: int) -> _Outcome:
    out = _Outcome([""] * n, [None] * n, [[] for _ in range(n)])
    async for ev in run.events_until_done():
        if isinstance(ev, Delta):
            out.texts[ev.index] += ev.text
            out.logprobs[ev.index] += ev.logprobs
            out.reasons[ev.index] = FINISH_REASONS.get(ev.finish_reason, ev.finish_reason)
        elif isinstance(ev, PromptScores):
            out.prompt = ev.logprobs
        elif isinstance(ev, Done):
            out.usage = _usage(ev.usage)
    return out


def _template_message(m: p.ChatMessage) -> dict:
    """A request message as HF chat templates take it (tool-call arguments as a dict)."""
    msg: dict = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
    if m.tool_calls:
        msg["tool_calls"] = [{"id": c.id, "type": "function",
                              "function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)}}
                             for c in m.tool_calls]
    if m.tool_call_id is not None:
        msg["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        msg["name"] = m.name
    return msg


def _arguments(text: str) -> dict | str:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, dict) else text


def _chat_choice(req: p.ChatCompletionRequest, index: int, text: str, reason: str | None,
                 logprobs: list[TokenLogprob]) -> p.ChatChoice:
    content, calls = (tools.parse_calls(text, req.tools) if req.uses_tools else (text, []))
    return p.ChatChoice(index=index, message=p.AssistantMessage(content=content, tool_calls=calls or None),
                        finish_reason="tool_calls" if calls else reason,
                        logprobs=_chat_logprobs(logprobs) if req.logprobs else None)


def _token_text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="backslashreplace")


def _chat_logprobs(entries: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> p.ChoiceLogprobs:
    return p.ChoiceLogprobs(content=[
        p.TokenLogprob(token=e.text, logprob=e.logprob, bytes=list(e.bytes),
                       top_logprobs=[p.TopLogprob(token=_token_text(b), logprob=lp, bytes=list(b))
                                     for _, b, lp in e.top])
        for e in entries])


def _completion_logprobs(entries: list[TokenLogprob] | tuple[TokenLogprob, ...], offset: int) -> p.CompletionLogprobs:
    """The legacy shape; ``offset``: where the first token's text starts in the choice's text."""
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.text)
    return p.CompletionLogprobs(
        tokens=[e.text for e in entries], token_logprobs=[e.logprob for e in entries],
        top_logprobs=[None if e.logprob is None else {_token_text(b): lp for _, b, lp in e.top} for e in entries],
        text_offset=offsets)


async def _chat_stream(run: Run, rid: str, model: str, req: p.ChatCompletionRequest):
    def chunk(choices, usage=None) -> str:
        return _sse(p.ChatCompletionChunk(id=rid, model=model, choices=choices, usage=usage))

    held = [""] * req.n  # with tools: a choice's text, sent once it is known whether it calls
    held_logprobs: list[list[TokenLogprob]] = [[] for _ in range(req.n)]
    for i in range(req.n):
        yield chunk([p.ChatChunkChoice(index=i, delta=p.ChatDelta(role="assistant", content=""))])
    async for ev in _relay(run):
        if isinstance(ev, Delta) and req.uses_tools:
            held[ev.index] += ev.text
            held_logprobs[ev.index] += ev.logprobs
            if ev.finish_reason is None:
                continue
            whole = _chat_choice(req, ev.index, held[ev.index], FINISH_REASONS.get(ev.finish_reason),
                                 held_logprobs[ev.index])
            calls = [p.ToolCallDelta(index=k, **c.model_dump()) for k, c in enumerate(whole.message.tool_calls or [])]
            delta = p.ChatDelta(content=whole.message.content, tool_calls=calls or None)
            yield chunk([p.ChatChunkChoice(index=ev.index, delta=delta, finish_reason=whole.finish_reason,
                                           logprobs=whole.logprobs)])
        elif isinstance(ev, Delta):
            reason = FINISH_REASONS.get(ev.finish_reason, ev.finish_reason)
            delta = p.ChatDelta(content=ev.text) if ev.text else p.ChatDelta()
            yield chunk([p.ChatChunkChoice(index=ev.index, delta=delta, finish_reason=reason,
                                           logprobs=_chat_logprobs(ev.logprobs) if req.logprobs else None)])
        elif isinstance(ev, Done) and req.include_usage:
            yield chunk([], _usage(ev.usage))
        elif isinstance(ev, str):
            yield ev
    yield _sse("[DONE]")


async def _completion_stream(run: Run, rid: str, model: str, req: p.CompletionRequest, echo: str | None):
    offsets = [0] * req.n  # characters of each choice's text sent so far

    def chunk(index: int, text: str, reason: str | None = None, entries=()) -> str:
        logprobs = None if req.logprobs is None else _completion_logprobs(entries, offsets[index])
        offsets[index] += len(text)
        choice = p.CompletionChoice(index=index, text=text, finish_reason=reason, logprobs=logprobs)
        return _sse(p.Completion(id=rid, model=model, choices=[choice]))

    for i in range(req.n if echo else 0):
        yield chunk(i, echo)
    async for ev in _relay(run):
        if isinstance(ev, PromptScores):
            for i in range(req.n):
                yield chunk(i, "".join(e.text for e in ev.logprobs), entries=ev.logprobs)
        elif isinstance(ev, Delta):
            yield chunk(ev.index, ev.text, FINISH_REASONS.get(ev.finish_reason, ev.finish_reason), ev.logprobs)
        elif isinstance(ev, Done) and req.include_usage:
            yield _sse(p.Completion(id=rid, model=model, choices=[], usage=_usage(ev.usage)))
        elif isinstance(ev, str):
            yield ev
    yield _sse("[DONE]")


async def _relay(run: Run) -> AsyncIterator[Event | str]:
    """The run's events; a failure mid-stream becomes one SSE error event (the status is sent)."""
    try:
        async for ev in run.events_until_done():
            yield ev
    except APIError as e:
        yield _sse(json.dumps({"error": {"message": e.message, "type": e.type, "param": None,
                                         "code": e.code}}))
