"""User-facing generation: one-shot (``lowbit run``) and the interactive chat (``lowbit chat``)."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from lowbit.errors import LowbitError
from lowbit.runtime.batching import BatchEngine, Delta, Done, Request, Usage
from lowbit.runtime.engine import Engine, GenerationConfig, GenerationStats

HELP = "commands: /reset (forget the conversation), /stats (speed of the last reply), /help, /exit"


@dataclass
class GenerateArgs:
    """Arguments of ``lowbit run`` / ``lowbit chat``; ``None`` sampling fields take the folder's defaults."""

    model_dir: Path
    model_lib: Path
    prompt: str | None = None
    chat_template: bool = False  # run: wrap the prompt as one user turn
    system: str | None = None
    max_new_tokens: int = 256
    temperature: float | None = None
    top_p: float | None = None
    top_k: int = 0
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    context_window: int | None = None


def generation_config(args: GenerateArgs, engine: Engine, chat: bool) -> GenerationConfig:
    """Sampling from the arguments, else from ``mlc-chat-config.json`` (as mlc_llm does)."""
    sampling = engine.sampling_params(args.temperature, args.top_p, args.top_k,
                                      args.repetition_penalty, args.seed)
    stops = list(args.stop) + (engine.chat_stop_strings() if chat else [])
    return GenerationConfig(args.max_new_tokens, sampling, tuple(dict.fromkeys(stops)),
                            engine.default_stop_token_ids())


def run_prompt(args: GenerateArgs, out: TextIO | None = None) -> GenerationStats:
    """Generate once from ``args.prompt``, streaming the text to ``out`` (stdout)."""
    out = out or sys.stdout
    if not args.prompt:
        raise LowbitError("--prompt is empty")
    engine = Engine(args.model_dir, args.model_lib, context_window=args.context_window)
    if args.chat_template:
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        ids = engine.chat_prompt_ids(messages + [{"role": "user", "content": args.prompt}])
    else:
        ids = engine.tokenizer.encode(args.prompt)
    with _prefill_bar(engine.prefill_chunk) as progress:
        for delta in engine.generate(ids, generation_config(args, engine, args.chat_template),
                                     prefill_progress=progress):
            out.write(delta)
            out.flush()
    out.write("\n")
    out.flush()
    return engine.last_stats


@contextlib.contextmanager
def _prefill_bar(chunk: int) -> Iterator[Callable[[int], Callable[[int], None] | None]]:
    """A prefill progress bar on stderr for prompts longer than one chunk (the text goes to
    stdout; the bar is closed before it starts)."""
    from tqdm import tqdm

    bars: list[tqdm] = []

    def start(total: int) -> Callable[[int], None] | None:
        if total <= chunk:
            return None
        bars.append(tqdm(total=total, desc="prefill", unit="tok", file=sys.stderr, leave=False, mininterval=0))

        def advance(n: int) -> None:
            bars[-1].update(n)
            if bars[-1].n >= total:
                bars[-1].close()
        return advance

    try:
        yield start
    finally:
        for bar in bars:
            bar.close()


class ChatSession:
    """A multi-turn conversation on the batching engine (the server's); each turn forks the
    cached sequence of the turns before it, so only the new turn is prefilled."""

    def __init__(self, batch: BatchEngine, config: GenerationConfig, system: str | None = None):
        self.batch, self.config, self.system = batch, config, system
        self.messages: list[dict[str, str]] = []
        self.last_usage = Usage()
        self.finish_reason = ""
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def reply(self, user: str, should_stop: Callable[[], bool] | None = None) -> Iterator[str]:
        """Stream the assistant's answer to ``user``; the (possibly partial) answer joins the history."""
        engine = self.batch.engine
        self.finish_reason = ""
        self.messages.append({"role": "user", "content": user})
        ids = engine.chat_prompt_ids(self.messages)
        answer: list[str] = []
        try:
            for event in self.batch.stream(Request(ids, self.config), should_stop, keep_prefix=True):
                if isinstance(event, Delta):
                    answer.append(event.text)
                    self.finish_reason = event.finish_reason or self.finish_reason
                    yield event.text
                elif isinstance(event, Done):
                    self.last_usage = event.usage
                else:
                    raise LowbitError(event.message)
        except LowbitError:
            self.messages.pop()
            raise
        self.messages.append({"role": "assistant", "content": "".join(answer)})


@contextlib.contextmanager
def _interruptible() -> Iterator[Callable[[], bool]]:
    """While active, Ctrl-C sets a flag (polled between tokens) instead of raising."""
    hit = [False]

    def handler(signum, frame):
        hit[0] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: hit[0]
    finally:
        signal.signal(signal.SIGINT, previous)


def chat(args: GenerateArgs, stdin: TextIO | None = None, out: TextIO | None = None) -> None:
    """The interactive loop: a line is a user turn; Ctrl-C stops a reply, Ctrl-D or /exit leaves."""
    stdin, out = stdin or sys.stdin, out or sys.stdout
    engine = Engine(args.model_dir, args.model_lib, max_batch_size=2, context_window=args.context_window)
    batch = BatchEngine(engine, max_running=1).start()
    out.write(f"lowbit chat: {args.model_dir} ({engine.chat_config.get('quantization')}). {HELP}\n")
    try:
        _chat_loop(ChatSession(batch, generation_config(args, engine, chat=True), args.system), stdin, out)
    finally:
        batch.shutdown(drain=False)


def _chat_loop(session: ChatSession, stdin: TextIO, out: TextIO) -> None:
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401 - line editing and history for input()
    while True:
        try:
            line = input(">>> ") if stdin is sys.stdin else _read_line(stdin, out)
        except KeyboardInterrupt:
            out.write("\n")
            continue
        except EOFError:
            out.write("\n")
            return
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return
        if line == "/reset":
            session.reset()
            out.write("(conversation reset)\n")
        elif line == "/stats":
            out.write(session.last_usage.summary() + "\n")
        elif line == "/help" or line.startswith("/"):
            out.write(HELP + "\n")
        else:
            _answer(session, line, out)


def _read_line(stdin: TextIO, out: TextIO) -> str:
    out.write(">>> ")
    out.flush()
    line = stdin.readline()
    if not line:
        raise EOFError
    return line


def _answer(session: ChatSession, line: str, out: TextIO) -> None:
    try:
        with _interruptible() as stopped:
            for delta in session.reply(line, stopped):
                out.write(delta)
                out.flush()
    except LowbitError as e:  # e.g. the conversation outgrew the context window
        out.write(f"\nerror: {e} (use /reset)\n")
        return
    if session.finish_reason == "interrupted":
        out.write(" [interrupted]")
    out.write("\n")
