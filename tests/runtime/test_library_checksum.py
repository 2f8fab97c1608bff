"""Checks every load makes: the library's sha256 that ``lowbit compile`` writes beside it (a
library without one is checked for truncation, then loaded once in a child process that a crash
ends instead of the CLI), and the sha256 of ``tokenizer.json`` that ``lowbit convert`` records
in ``tensor-cache.json``."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from required_tools import require_any

from lowbit.cli import main
from lowbit.runtime.library_check import CHECKED_DIR


@pytest.fixture
def lib_copy(tiny_chat, tmp_path, monkeypatch):
    """The tiny library and its checksum file, copied (a test may damage them); an empty cache."""
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    lib = tmp_path / tiny_chat.lib.name
    shutil.copy2(tiny_chat.lib, lib)
    shutil.copy2(tiny_chat.lib.with_name(tiny_chat.lib.name + ".sha256"), tmp_path)
    return lib


def run(tiny_chat, lib):
    return CliRunner().invoke(main, ["run", str(tiny_chat.mlc_dir), "--model-lib", str(lib),
                                     "--prompt", "Hi", "--max-new-tokens", "2", "--temperature", "0"])


def test_compile_writes_sha256sum_line(tiny_chat):
    record = tiny_chat.lib.with_name(tiny_chat.lib.name + ".sha256").read_text()
    assert record == f"{hashlib.sha256(tiny_chat.lib.read_bytes()).hexdigest()}  {tiny_chat.lib.name}\n"


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_library_is_one_line_error(tiny_chat, lib_copy, damage):
    data = bytearray(lib_copy.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]  # loading this unchecked ends the process with SIGBUS
    else:
        data[len(data) // 3] ^= 0x10
    lib_copy.write_bytes(bytes(data))
    result = run(tiny_chat, lib_copy)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: model library {lib_copy} does not match its sha256 in {lib_copy.name}.sha256 "
        "(truncated or corrupted): rebuild it with lowbit compile")


def test_library_without_checksum_loads_after_one_check(tiny_chat, lib_copy, tmp_path, monkeypatch):
    """The child process's verdict is kept by the library's sha256: the next load spawns none."""
    lib_copy.with_name(lib_copy.name + ".sha256").unlink()
    result = run(tiny_chat, lib_copy)
    assert result.exit_code == 0, result.output
    assert result.stdout == run(tiny_chat, tiny_chat.lib).stdout
    digest = hashlib.sha256(lib_copy.read_bytes()).hexdigest()
    assert [p.name for p in (tmp_path / "cache" / CHECKED_DIR).iterdir()] == [digest]

    def no_child(*args, **kwargs):
        raise AssertionError(f"a second check process: {args}")

    monkeypatch.setattr(subprocess, "run", no_child)
    assert run(tiny_chat, lib_copy).stdout == result.stdout


@pytest.fixture
def crashing_lib(tmp_path) -> Path:
    """A shared library whose load ends the process with SIGSEGV (a constructor that raises it),
    without a checksum: what a corrupted library from before checksums can do to the loader."""
    cxx = require_any(("g++", "c++", "cc"), "builds a library that crashes on load")
    src = tmp_path / "crash.c"
    src.write_text("#include <signal.h>\n__attribute__((constructor)) static void crash(void) { raise(SIGSEGV); }\n")
    lib = tmp_path / "crash.so"
    subprocess.run([cxx, "-x", "c", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return lib


@pytest.mark.parametrize("command", ["run", "eval ppl"])
def test_library_that_crashes_the_loader_is_one_line_error(tiny_chat, crashing_lib, tmp_path, monkeypatch, command):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out" / "ppl.json"
    args = {"run": ["run", str(tiny_chat.mlc_dir), "--model-lib", str(crashing_lib), "--prompt", "Hi"],
            "eval ppl": ["eval", "ppl", str(tiny_chat.mlc_dir), "--model-lib", str(crashing_lib),
                         "--seqlen", "16", "--windows", "1", "-o", str(out)]}[command]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        f"error: model library {crashing_lib} crashed the loader (SIGSEGV) in a check process: "
        "truncated or corrupted? rebuild it with lowbit compile"]
    assert not out.parent.exists() and not (tmp_path / "cache" / CHECKED_DIR).exists()


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.1])
def test_truncated_library_without_checksum_is_one_line_error(tiny_chat, lib_copy, keep):
    """An older library (no .sha256) cut short: its ELF header lists more than the file holds."""
    lib_copy.with_name(lib_copy.name + ".sha256").unlink()
    data = lib_copy.read_bytes()
    lib_copy.write_bytes(data[: int(len(data) * keep)])
    result = run(tiny_chat, lib_copy)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith(
        f"error: model library {lib_copy} is truncated ({int(len(data) * keep)} bytes")


def test_edited_tokenizer_is_one_line_error(tiny_chat, tmp_path):
    """A tokenizer.json that still parses but lost its decoder would detokenize differently."""
    mlc = tmp_path / "mlc"
    shutil.copytree(tiny_chat.mlc_dir, mlc)
    tok = json.loads((mlc / "tokenizer.json").read_text())
    del tok["decoder"]
    (mlc / "tokenizer.json").write_text(json.dumps(tok))
    result = CliRunner().invoke(main, ["run", str(mlc), "--model-lib", str(tiny_chat.lib), "--prompt", "Hi",
                                       "--max-new-tokens", "2", "--temperature", "0"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: {mlc / 'tokenizer.json'} does not match the sha256 in tensor-cache.json (edited or corrupted)")
