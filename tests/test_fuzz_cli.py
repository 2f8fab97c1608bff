"""Fuzz the CLI in-process: every bad input ends in a one-line error with a non-zero exit code,
no traceback and nothing written.

The commands and their options are enumerated from ``lowbit.cli.main`` itself, so a command or
option added later is fuzzed without editing this file. Values are a fixed list of edge cases
plus a seeded random sample (bounded count); each case's outcome is tallied and printed.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import re
import time
from collections import Counter
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from lowbit.artifact import library_checksum_path
from lowbit.cli import main
from lowbit.targets.presets import PRESETS

SEED = int(os.environ.get("LOWBIT_FUZZ_SEED", "25"))  # CI runs one seed; others explore more
RANDOM_VALUES = 3  # seeded random values per option, on top of the fixed edge cases
HUGE = str(10**30)
INT_VALUES = ("0", "-1", "1", HUGE, f"-{HUGE}", "1.5", "abc", "", "0x10")
FLOAT_VALUES = ("0", "-1", "1", "nan", "inf", "-inf", "1e400", "abc", "", "1,5")
CHOICE_VALUES = ("nope", "", "-1", "0")
HOST_TARGET = "llvm"  # the preset whose libraries this machine runs


def commands(group: click.Group = main, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    """Every leaf command under ``group``, with the words that invoke it."""
    out = []
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            out += commands(cmd, (*path, name))
        else:
            out.append(((*path, name), cmd))
    return out


def is_numeric(param: click.Parameter) -> bool:
    return isinstance(param.type, (click.types.IntParamType, click.types.FloatParamType))


def fuzzed(param: click.Parameter) -> bool:
    """Options and arguments whose value is parsed (numbers, choices, custom types), not free
    text, paths or flags."""
    t = param.type
    return not (isinstance(param, click.Option) and param.is_flag) and not isinstance(
        t, (click.types.StringParamType, click.Path, click.types.BoolParamType, click.File))


def bad_values(param: click.Parameter, rng: random.Random) -> list[str]:
    """Edge cases for the parameter's kind, then seeded random values."""
    t = param.type
    if isinstance(t, click.Choice):
        return [*CHOICE_VALUES, *(c.upper() + "x" for c in t.choices[:1]),
                *("".join(rng.choices("abcxyz019-_", k=rng.randint(1, 8))) for _ in range(RANDOM_VALUES))]
    if isinstance(t, click.types.FloatParamType):
        return [*FLOAT_VALUES, *(repr(rng.uniform(-1e6, 1e6)) for _ in range(RANDOM_VALUES))]
    return [*INT_VALUES, *(str(rng.randint(-(2**40), 2**40)) for _ in range(RANDOM_VALUES))]


def rejected_by_parser(param: click.Parameter, value: str) -> bool:
    try:
        param.type.convert(value, param, None)
    except click.BadParameter:
        return True
    return False


def base_args(cmd: click.Command, tmp: Path, skip: click.Parameter | None = None) -> list[str]:
    """Arguments (dummy paths that do not exist, or a valid choice) and required options."""
    args: list[str] = []
    for p in cmd.params:
        if p is skip:
            continue
        value = p.type.choices[0] if isinstance(p.type, click.Choice) else str(tmp / "in" / p.name)
        if isinstance(p, click.Argument):
            args.append(value)
        elif p.required:
            path_like = isinstance(p.type, click.Path)
            args += [p.opts[0], str(tmp / "out" / p.name) if path_like else value]
    return args


def assert_clean_failure(result: click.testing.Result, case: str) -> str:
    """Exit 2 (a usage error) or 1 (a LowbitError), one short error line, no traceback; the
    outcome's name."""
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{case}: {result.exception!r:.300}")
    assert "Traceback" not in result.output, case
    lines = [line for line in result.output.splitlines() if line.strip()]
    prefix = {2: "Error:", 1: "error:"}.get(result.exit_code)
    assert prefix is not None, f"{case}: exit code {result.exit_code}\n{result.output}"
    errors = [line for line in lines if line.startswith(prefix)]
    assert len(errors) == 1 and errors[0] == lines[-1] and len(errors[0]) < 400, f"{case}\n{result.output}"
    return {2: "usage error", 1: "lowbit error"}[result.exit_code]


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty working directory (default outputs land here) and an empty cache elsewhere."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    # --threads sets it for the process (the CLI's lifetime); restore it after the cases
    monkeypatch.setenv("TVM_NUM_THREADS", os.environ.get("TVM_NUM_THREADS") or str(os.cpu_count()))
    return work


def test_every_numeric_option_has_a_range():
    """An unbounded ``int``/``float`` option is the class of bug this file guards against."""
    unbounded = [
        f"{' '.join(path)} {p.opts[0]}" for path, cmd in commands() for p in cmd.params
        if is_numeric(p) and not (isinstance(p.type, click.types._NumberRangeBase)
                                  and (p.type.min is not None or p.type.max is not None))
    ]
    assert unbounded == []


@pytest.mark.parametrize("args", [
    ["eval", "ppl", "m", "--windows", "0"], ["eval", "ppl", "m", "--seqlen", "0"],
    ["eval", "ppl", "m", "--seqlen", "-5"], ["eval", "ppl", "m", "--batch-size", "-1"],
    ["calibrate", "m", "-o", "o", "--nsamples", "0"], ["calibrate", "m", "-o", "o", "--seqlen", "0"],
    ["calibrate", "m", "-o", "o", "--epochs", "-1"], ["calibrate", "m", "-o", "o", "--epochs", "0"],
    ["calibrate", "m", "-o", "o", "--bits", "5"], ["calibrate", "m", "-o", "o", "--group-size", "0"],
    ["calibrate", "m", "-o", "o", "--lr", "nan"], ["run", "d", "--model-lib", "l", "--prompt", "p",
                                                   "--max-new-tokens", "0"],
    ["run", "d", "--model-lib", "l", "--prompt", "p", "--max-new-tokens", "-1"],
    ["run", "d", "--model-lib", "l", "--prompt", "p", "--top-p", "0"],
    ["serve", "d", "--model-lib", "l", "--port", "70000"],
])
def test_known_bad_values_are_usage_errors(workdir, args):
    """The issue's examples (and their neighbours), each a usage error before anything loads."""
    result = CliRunner().invoke(main, args)
    assert assert_clean_failure(result, " ".join(args)) == "usage error"
    assert list(workdir.iterdir()) == []


def test_fuzz_options(workdir, capsys):
    """Every parsed option and argument of every command, fed bad values."""
    rng = random.Random(SEED)
    runner = CliRunner()
    outcomes: Counter[str] = Counter()
    for path, cmd in commands():
        for param in filter(fuzzed, cmd.params):
            for value in bad_values(param, rng):
                case = f"{' '.join(path)} {param.name}={value!r}"
                if isinstance(param, click.Argument):
                    args = [*path, value, *base_args(cmd, workdir, skip=param)]
                else:
                    args = [*path, *base_args(cmd, workdir), param.opts[0], value]
                result = runner.invoke(main, args, input="")
                if result.exit_code == 0:
                    outcome = "ok"  # e.g. `list` with a valid choice
                    assert not rejected_by_parser(param, value), case
                else:
                    outcome = assert_clean_failure(result, case)
                    assert (outcome == "usage error") == rejected_by_parser(param, value), (
                        f"{case}\n{result.output}")
                assert sorted(workdir.iterdir()) == [], f"{case} wrote {sorted(workdir.iterdir())}"
                outcomes[outcome] += 1
    with capsys.disabled():
        print(f"\nfuzz options: {sum(outcomes.values())} cases, {dict(sorted(outcomes.items()))}")
    assert outcomes["usage error"] > 100


# -- corrupted artifacts -------------------------------------------------------------------------
def corruptions(path: Path) -> list[str]:
    """What is done to one file: every file can be truncated, flipped or deleted; JSON files also
    get text that is not JSON, JSON that is not an object, an object with a key dropped and
    objects with a key's value of the wrong type; a library with a recorded sha256 is also
    truncated with that record deleted (as a library from before checksums)."""
    kinds = ["truncate", "truncate", "flip", "flip", "delete"]
    if path.suffix == ".json":
        kinds += ["garbage", "not-object", "drop-key", "wrong-type", "wrong-type"]
    if library_checksum_path(path).is_file():
        kinds += ["truncate-unchecked"]
    return kinds


def corrupt(path: Path, kind: str, rng: random.Random) -> None:
    """Replace ``path`` (a symlink into the pristine artifact) by a corrupted copy."""
    data = path.read_bytes()
    path.unlink()
    if kind == "delete":
        return
    if kind.startswith("truncate"):
        data = data[: rng.randrange(len(data))]
        if kind == "truncate-unchecked":
            library_checksum_path(path).unlink()
    elif kind == "flip":
        buf = bytearray(data)
        for i in rng.sample(range(len(buf)), min(3, len(buf))):
            buf[i] ^= 1 << rng.randrange(8)
        data = bytes(buf)
    elif kind == "garbage":
        data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
    elif kind == "not-object":
        data = rng.choice([b"[]", b"null", b'"x"', b"42"])
    elif kind == "drop-key":
        obj = json.loads(data)
        obj.pop(rng.choice(sorted(obj)), None)
        data = json.dumps(obj).encode()
    elif kind == "wrong-type":  # a key's value replaced by one of another JSON type
        obj = json.loads(data)
        key = rng.choice(sorted(obj))
        obj[key] = rng.choice([v for v in ("x", -1, 1.5, None, [], {}, True) if type(v) is not type(obj[key])])
        data = json.dumps(obj).encode()
    path.write_bytes(data)


def linked_copy(files: list[Path], dest: Path) -> list[Path]:
    """``dest`` with a symlink to each file (a case copies only the file it corrupts)."""
    dest.mkdir(parents=True)
    for f in files:
        (dest / f.name).symlink_to(f)
    return [dest / f.name for f in files]


def written(case_dir: Path) -> str:
    """A digest of each file a command wrote, its paths in the case folder made generic; a file
    copied verbatim from the (possibly corrupted) input is named as such."""
    out, inp = case_dir / "out", case_dir / "in"
    lines = []
    for f in sorted(out.rglob("*")) if out.is_dir() else []:
        data = f.read_bytes()
        if (inp / f.name).is_file() and (inp / f.name).read_bytes() == data:
            lines.append(f"{f.relative_to(out)} copied")
        else:
            data = data.replace(str(case_dir).encode(), b"CASE")
            data = re.sub(rb'"seconds": [-+.e0-9]+', b"", data)
            lines.append(f"{f.relative_to(out)} {hashlib.sha256(data).hexdigest()}")
    return "".join(f"\n{line}" for line in lines)


def fuzz_artifact(files: list[Path], command, tmp: Path, rng: random.Random,
                  outcomes: Counter[str], refused: bool = False) -> None:
    """Corrupt each file of an artifact in turn and run ``command(folder, out) -> args`` on a
    folder of the files; expect the reference result (exit 0, same stdout) or a one-line error
    with nothing written. An artifact this machine does not take (``refused``) is a one-line
    error even intact, and so is every corruption of it."""

    def invoke(case_dir: Path, target: Path | None = None, kind: str = ""):
        linked_copy(files, case_dir / "in")
        if target is not None:
            corrupt(case_dir / "in" / target.name, kind, rng)
        result = CliRunner().invoke(main, command(case_dir / "in", case_dir / "out"))
        stdout = re.sub(r'"seconds": [-+.e0-9]+', '"seconds": T', result.stdout)  # timings vary
        return result, stdout.replace(str(case_dir), "CASE") + written(case_dir)

    reference, expected = invoke(tmp / "reference")
    if refused:
        outcomes[f"{assert_clean_failure(reference, 'intact')} (intact)"] += 1
    else:
        assert reference.exit_code == 0, reference.output
    for n, (target, kind) in enumerate((f, k) for f in files for k in corruptions(f)):
        result, stdout = invoke(tmp / f"case{n}", target, kind)
        case = f"{target.name} {kind}"
        if result.exit_code == 0:
            assert not refused, f"{case}: ran a library this machine refuses intact\n{result.output}"
            # an optional file deleted is a valid input: the same output, less that file's copy
            want = expected.replace(f"\n{target.name} copied", "") if kind == "delete" else expected
            assert stdout == want, f"{case}: silently different output\n{result.output}"
            outcomes["ok (same output)" if want == expected else "ok (optional file absent)"] += 1
        else:
            outcomes[f"{assert_clean_failure(result, case)}"] += 1
            assert not (tmp / f"case{n}" / "out").exists(), f"{case} wrote its output"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog. " * 8
                                  for i in range(12)))
    return path


def test_fuzz_mlc_artifacts(tiny_chat, corpus, tmp_path, capsys):
    """Every file of an MLC folder, corrupted, fed to ``run`` and ``eval ppl --model-lib`` with
    the intact library (libraries are fuzzed by kind below)."""
    rng = random.Random(SEED)
    files = sorted(tiny_chat.mlc_dir.iterdir())
    lib = str(tiny_chat.lib)
    commands = {
        "run": lambda d, out: ["run", str(d), "--model-lib", lib, "--prompt", "Hello",
                               "--max-new-tokens", "3", "--temperature", "0"],
        "eval ppl": lambda d, out: ["eval", "ppl", str(d), "--model-lib", lib,
                                    "--data", str(corpus), "--seqlen", "16", "--windows", "2",
                                    "-o", str(out / "ppl.json")],
    }
    for name, command in commands.items():
        outcomes: Counter[str] = Counter()
        fuzz_artifact(files, command, tmp_path / name.replace(" ", "-"), rng, outcomes)
        with capsys.disabled():
            print(f"\nfuzz {name} on an MLC folder: {sum(outcomes.values())} cases, {dict(sorted(outcomes.items()))}")


def library_kinds() -> dict[str, str]:
    """Each kind (suffix) of library ``lowbit compile`` writes → the first target preset that
    writes it with the tools this machine has."""
    kinds: dict[str, str] = {}
    for name, preset in PRESETS.items():
        for fmt in preset.formats:
            if all(tool.find() is not None for tool in fmt.tools):
                kinds.setdefault(fmt.suffix, name)
    missing = {f.suffix for p in PRESETS.values() for f in p.formats} - set(kinds)
    assert not missing or os.environ.get("CI") != "true", f"no tools to build {missing}"
    return kinds


def test_fuzz_library_kinds(tiny_chat, tiny_chat_library, tmp_path, monkeypatch, capsys):
    """Each kind of library ``lowbit compile`` writes, with what it writes beside it (checksum,
    static metadata), corrupted, fed to ``run`` (``chat``, ``eval ppl`` and ``serve`` load
    libraries through the same function). This machine's preset (llvm) must run; a kind built
    for another machine, or a static archive or object tar, is refused in one line, intact or not."""
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    rng = random.Random(SEED)
    for suffix, target in library_kinds().items():
        start = time.monotonic()
        lib = tiny_chat_library(target, suffix)
        files = [lib, *sorted(lib.parent.glob(f"{glob.escape(lib.name)}.*"))]
        outcomes: Counter[str] = Counter()
        fuzz_artifact(files, lambda d, out, name=lib.name: [
            "run", str(tiny_chat.mlc_dir), "--model-lib", str(d / name), "--prompt", "Hello",
            "--max-new-tokens", "3", "--temperature", "0"], tmp_path / suffix[1:], rng, outcomes,
            refused=target != HOST_TARGET)
        with capsys.disabled():
            print(f"\nfuzz run on a {suffix} library ({target}, {len(files)} files): {sum(outcomes.values())} "
                  f"cases, {dict(sorted(outcomes.items()))}, {time.monotonic() - start:.0f} s with the build")


@pytest.fixture(scope="module")
def fused_dir(tiny_chat, tmp_path_factory) -> Path:
    """A fused RTN checkpoint of the tiny chat model (with its tokenizer)."""
    out = tmp_path_factory.mktemp("fused") / "w4g32"
    result = CliRunner().invoke(main, ["calibrate", str(tiny_chat.hf_dir), "--bits", "4",
                                       "--group-size", "32", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_fuzz_fused_checkpoint(fused_dir, tmp_path, capsys):
    """Every file of a fused checkpoint, corrupted, fed to ``convert``."""
    outcomes: Counter[str] = Counter()
    fuzz_artifact(sorted(fused_dir.iterdir()),
                  lambda d, out: ["convert", str(d), "--scheme", "w4a16g32asym", "-o", str(out)],
                  tmp_path, random.Random(SEED), outcomes)
    with capsys.disabled():
        print(f"\nfuzz convert on a fused checkpoint: {sum(outcomes.values())} cases, {dict(sorted(outcomes.items()))}")


def test_non_mlc_folder_is_one_line_error_without_network(workdir):
    """The issue's case: ``eval ppl`` on a folder that is not an MLC folder tried a model hub for
    50 s, then printed a traceback."""
    (workdir / "plain").mkdir()
    result = CliRunner().invoke(main, ["eval", "ppl", str(workdir / "plain"), "--model-lib",
                                       str(workdir / "lib.so"), "-o", str(workdir / "r.json")])
    assert assert_clean_failure(result, "eval ppl plain folder") == "lowbit error"
    assert "is not an MLC model folder (no mlc-chat-config.json)" in result.output
    assert sorted(p.name for p in workdir.iterdir()) == ["plain"]


def test_fuzz_corpus_files(tiny_chat, corpus, tmp_path, capsys):
    """A damaged corpus file (.txt, .jsonl) for ``eval ppl``: a result from whatever text is left
    (a corpus is the user's data, so a different one may score differently) or a one-line error."""
    rng = random.Random(SEED)
    docs = corpus.read_text().split("\n\n")
    sources = {".txt": corpus.read_text(), ".jsonl": "".join(json.dumps({"text": d}) + "\n" for d in docs)}
    outcomes: Counter[str] = Counter()
    for suffix, text in sources.items():
        for n, kind in enumerate(["truncate", "truncate", "flip", "flip", "garbage", "delete"]):
            case_dir = tmp_path / f"{suffix[1:]}{n}"
            case_dir.mkdir()
            data = case_dir / f"corpus{suffix}"
            data.write_text(text)
            corrupt(data, kind, rng)
            out = case_dir / "out" / "ppl.json"
            result = CliRunner().invoke(main, ["eval", "ppl", str(tiny_chat.mlc_dir), "--model-lib",
                                               str(tiny_chat.lib), "--data", str(data), "--seqlen", "16",
                                               "--windows", "2", "-o", str(out)])
            if result.exit_code == 0:
                assert json.loads(out.read_text())["windows"] == 2
                outcomes["ok (scored the damaged text)"] += 1
            else:
                outcomes[assert_clean_failure(result, f"corpus{suffix} {kind}")] += 1
                assert not out.parent.exists()
    with capsys.disabled():
        print(f"\nfuzz eval ppl on corpus files: {sum(outcomes.values())} cases, {dict(sorted(outcomes.items()))}")
