"""Checksums every load checks: the library's sha256 that ``lowbit compile`` writes beside it (a
library without one is at least checked for truncation), and the sha256 of ``tokenizer.json``
that ``lowbit convert`` records in ``tensor-cache.json``."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from click.testing import CliRunner

from lowbit.cli import main


@pytest.fixture
def lib_copy(tiny_chat, tmp_path):
    """The tiny library and its checksum file, copied (a test may damage them)."""
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


def test_library_without_checksum_still_loads(tiny_chat, lib_copy):
    lib_copy.with_name(lib_copy.name + ".sha256").unlink()
    result = run(tiny_chat, lib_copy)
    assert result.exit_code == 0, result.output
    assert result.stdout == run(tiny_chat, tiny_chat.lib).stdout


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
