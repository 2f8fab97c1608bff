"""`lowbit chat` in a real terminal (a pty): chat template, multi-turn, /stats, /reset, Ctrl-C."""

from __future__ import annotations

import os
import pty
import re
import select
import sys
import time
from pathlib import Path

import pytest
import torch

MAX_NEW = 40
LONG = 900  # the interrupted reply's limit (the tiny model's window is 1024)
ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]|\x1b[=>]")


class Terminal:
    """A child process on a pseudo-terminal (its controlling tty, so Ctrl-C is a real SIGINT)."""

    def __init__(self, argv: list[str]):
        env = dict(os.environ, TERM="dumb", COLUMNS="1000")
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # child
            os.execve(argv[0], argv, env)
        self.buf = ""

    def read_until(self, marker: str, timeout: float = 120) -> str:
        """Everything up to and including ``marker`` (``\\r`` and escape codes removed)."""
        end = time.monotonic() + timeout
        while marker not in self.buf:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {marker!r}; got {self.buf[-500:]!r}")
            if select.select([self.fd], [], [], min(left, 1.0))[0]:
                try:
                    data = os.read(self.fd, 65536).decode("utf-8", "replace")
                except OSError:  # the child closed the terminal
                    raise AssertionError(f"child exited before {marker!r}; got {self.buf[-500:]!r}") from None
                self.buf += ANSI.sub("", data.replace("\r", ""))
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float = 60) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.2)
        os.kill(self.pid, 9)
        raise AssertionError("chat did not exit")


def _reference_reply(tiny_chat, tokenizer, model, messages) -> str:
    """transformers' chat template + PyTorch greedy decoding, stopped at <|im_end|>."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(ids, add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=MAX_NEW, do_sample=False,
                             eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=0)
    new = out[0, len(ids):].tolist()
    return tokenizer.decode(new, skip_special_tokens=True)


def _turn(term: Terminal, text: str) -> str:
    term.send(text + "\n")
    term.read_until(text + "\n")  # the terminal's echo
    return term.read_until("\n>>> ")[: -len("\n>>> ")]


@pytest.mark.skipif(sys.platform != "linux", reason="pty")
def test_chat_in_a_terminal(tiny_chat):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat.hf_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_chat.hf_dir, dtype=torch.float32).eval()
    lowbit = str(Path(sys.executable).parent / "lowbit")
    term = Terminal([lowbit, "chat", str(tiny_chat.mlc_dir), "--model-lib", str(tiny_chat.lib),
                     "--temperature", "0", "--max-new-tokens", str(MAX_NEW)])
    assert "/reset" in term.read_until(">>> ", timeout=180)

    messages = [{"role": "user", "content": "Hi there"}]
    first = _turn(term, "Hi there")
    assert first == _reference_reply(tiny_chat, tokenizer, model, messages)
    messages += [{"role": "assistant", "content": first}, {"role": "user", "content": "And then?"}]
    assert _turn(term, "And then?") == _reference_reply(tiny_chat, tokenizer, model, messages)

    stats = _turn(term, "/stats")
    assert re.fullmatch(r"prefill: \d+ tok \((\d+) cached\), [\d.]+ tok/s; decode: \d+ tok, [\d.]+ tok/s; "
                        r"first token after [\d.]+ s", stats)
    assert int(re.search(r"\((\d+) cached\)", stats).group(1)) > 0  # the second turn reused the first
    assert _turn(term, "/reset") == "(conversation reset)"
    assert _turn(term, "Hi there") == first  # the history is gone
    term.send("/exit\n")
    assert term.wait() == 0

    # Ctrl-C mid-reply: a reply long enough (one thread, up to LONG tokens) that the interrupt
    # lands while it streams, however fast the machine
    term = Terminal([lowbit, "chat", str(tiny_chat.mlc_dir), "--model-lib", str(tiny_chat.lib),
                     "--temperature", "0", "--max-new-tokens", str(LONG), "--threads", "1"])
    assert "/reset" in term.read_until(">>> ", timeout=180)
    term.send("Tell me a long story\n")
    term.read_until("Tell me a long story\n")
    assert term.buf or select.select([term.fd], [], [], 60)[0]  # the reply has started streaming
    term.send("\x03")
    interrupted = term.read_until("\n>>> ")
    assert "[interrupted]" in interrupted
    decoded = int(re.search(r"decode: (\d+) tok", _turn(term, "/stats")).group(1))
    assert 0 < decoded < LONG
    term.send("/exit\n")
    assert term.wait() == 0
