"""With warm caches every command runs with the network blocked: proxy variables point at a closed
local port, the HF offline variables are unset (lowbit sets offline mode itself), and a socket
hook records every connection and name lookup off the loopback interface, or to the proxy.

Each command the CLI has runs once in-process on the tiny fixtures; one without a case here
(``compile``, ``package`` and ``serve``: a build takes seconds, a server binds a port) runs as
``--help``, and its own tests build and serve under the session-wide hook of ``conftest.offline``.

With cold caches the only network use is ``pip download`` of the data wheels: the code that runs
it, and every wheel it can fetch (named with its version in the README), are checked here.
"""

from __future__ import annotations

import gc
import importlib
import ipaddress
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_fuzz_cli import commands

from lowbit.cli import main

CLOSED_PORT = 9  # discard: nothing listens on it here
PROXY = f"http://127.0.0.1:{CLOSED_PORT}"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def _address(host: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    host = host.decode() if isinstance(host, bytes) else str(host)
    try:
        return ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None


def _local(host: object) -> bool:
    """A loopback address or name (an empty host is a lookup for binding, not a connection)."""
    address = _address(host)
    return host in (None, "", b"", "localhost") or (address is not None and address.is_loopback)


@pytest.fixture
def blocked_network(monkeypatch) -> list[str]:
    """The attempts made while the test runs (each also fails with OSError)."""
    for var in PROXY_VARIABLES:
        monkeypatch.setenv(var, PROXY)
    for var in ("NO_PROXY", "no_proxy", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    attempts: list[str] = []

    def guard(real):
        def hooked(self, address):
            if isinstance(address, tuple) and (not _local(address[0]) or address[1] == CLOSED_PORT):
                attempts.append(f"connect {address}")
                raise OSError(f"network blocked by the test: {address}")
            return real(self, address)
        return hooked

    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):  # an address needs no lookup: its connect is seen
        if not _local(host) and _address(host) is None:
            attempts.append(f"lookup {host}")
            raise socket.gaierror(f"network blocked by the test: {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guard(socket.socket.connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guard(socket.socket.connect_ex))
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts


def test_every_command_runs_with_the_network_blocked(tiny_chat, tmp_path, monkeypatch, blocked_network):
    monkeypatch.chdir(tmp_path)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog. " * 8
                                  for i in range(12)))
    fused, mlc = str(tmp_path / "fused"), str(tmp_path / "mlc")
    window = ["--data", str(corpus), "--seqlen", "16", "--windows", "2"]
    generate = [str(tiny_chat.mlc_dir), "--model-lib", str(tiny_chat.lib), "--max-new-tokens", "2",
                "--temperature", "0"]
    cases: dict[str, tuple[list[str], str]] = {  # name → (argv, stdin), run in this order
        "list": (["list"], ""),
        "calibrate": (["calibrate", str(tiny_chat.hf_dir), "--bits", "4", "--group-size", "32", "-o", fused], ""),
        "convert": (["convert", fused, "--scheme", "w4a16g32asym", "-o", mlc], ""),
        "eval ppl": (["eval", "ppl", fused, *window, "-o", "fused-ppl.json"], ""),
        "eval ppl --model-lib": (["eval", "ppl", *generate[:3], *window, "-o", "mlc-ppl.json"], ""),
        "eval tasks": (["eval", "tasks", fused, "--tasks", "piqa", "--limit", "2", "-o", "tasks.json"], ""),
        "run": (["run", *generate, "--prompt", "Hello"], ""),
        "chat": (["chat", *generate], "Hello\n/exit\n"),
        "bench": (["bench", *generate[:3], "--prompt-tokens", "8", "--new-tokens", "2"], ""),
    }
    for path, _ in commands():  # a command without a case above (or added later) runs as --help
        if not any(argv[: len(path)] == list(path) for argv, _ in cases.values()):
            cases[f"{' '.join(path)} --help"] = ([*path, "--help"], "")
    for name, (argv, stdin) in cases.items():
        result = CliRunner().invoke(main, argv, input=stdin)
        assert result.exit_code == 0, f"{name}\n{result.output}"
        assert blocked_network == [], f"{name}: {blocked_network}"
    assert [name for name in cases if name.endswith("--help")] == ["compile --help", "package --help", "serve --help"]


def test_the_hook_sees_direct_and_proxied_attempts(blocked_network):
    """The hook itself: a direct connection, a name lookup and a request sent through the proxy
    variables are each recorded and fail."""
    import urllib.request

    with pytest.raises(OSError):
        socket.create_connection(("203.0.113.1", 443), timeout=1)
    with pytest.raises(OSError):
        socket.getaddrinfo("huggingface.co", 443)
    with pytest.raises(OSError):  # a fresh opener: urlopen's global one keeps the proxies it first saw
        urllib.request.build_opener().open("https://huggingface.co/api/models", timeout=1)
    assert blocked_network == ["connect ('203.0.113.1', 443)", "lookup huggingface.co",
                               f"connect ('127.0.0.1', {CLOSED_PORT})"]


# -- cold caches: the only downloads are the README's --------------------------------------------
DOWNLOADERS = {"lowbit/packages.py", "targets/runtime_libs.py"}  # the code that runs `pip download`
TEST_ONLY_DOWNLOADERS = {"targets/runtime_libs.py": "aarch64_tvm_runtime"}  # not reached by a command


def _sources() -> list[Path]:
    from test_architectures import ROOT, STAGES

    return [p for stage in (*STAGES, "packager") for p in sorted((ROOT / stage).rglob("*.py"))]


def test_every_download_is_a_documented_wheel():
    """With cold caches a command downloads only through ``lowbit.packages`` (each wheel once,
    no dependencies), and every wheel it can fetch is named, with its version, in the README."""
    from test_architectures import ROOT

    from lowbit import packages
    from lowbit.evaluate import task_data

    runners = {p.relative_to(ROOT).as_posix() for p in _sources() if '"download"' in p.read_text()}
    assert runners == DOWNLOADERS
    for path, function in TEST_ONLY_DOWNLOADERS.items():
        module = path.removesuffix(".py").replace("/", ".")
        users = {p.relative_to(ROOT).as_posix() for p in _sources()
                 if function in p.read_text() and p.relative_to(ROOT).as_posix() != path}
        assert not users, f"{module}.{function} is reached by {users}: document its download"
    for p in _sources():  # every module that defines wheels, imported: then gc finds them all
        if "PackagedFile" in p.read_text():
            importlib.import_module("lowbit." + p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
                                    .removeprefix("lowbit."))
    wheels = {o.requirement for o in gc.get_objects() if type(o) is packages.PackagedFile}
    assert {packages.SMOLLM2_GGUF.requirement, "==".join(task_data.BENCHKIT)} <= wheels
    readme = (ROOT / "README.md").read_text()
    assert [w for w in sorted(wheels) if f"`{w}`" not in readme] == []
