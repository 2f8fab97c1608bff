"""One static archive from several: the models' objects and the engine's, and the symbols in it."""

from __future__ import annotations

import subprocess
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from lowbit.errors import LowbitError
from lowbit.targets.export import run_tool
from lowbit.targets.tools import LLVM_AR, LLVM_NM

LIBRARY_BIN = "__tvm_ffi__library_bin"  # a system library's blob: `{prefix}__tvm_ffi__library_bin`


def merge_archives(archives: list[Path], out: Path, ar_format: str) -> None:
    """``out`` holds every member of ``archives``; members are renamed ``<n>_<name>`` so that two
    archives' ``lib0.o`` stay two objects."""
    ar = LLVM_AR.command()
    with tempfile.TemporaryDirectory() as tmp:
        members: list[Path] = []
        for n, archive in enumerate(archives):
            folder = Path(tmp) / str(n)
            folder.mkdir()
            listed = subprocess.run([*ar, "t", str(Path(archive).resolve())], capture_output=True, text=True)
            if listed.returncode != 0:
                raise LowbitError(f"cannot read archive {archive}: {listed.stderr.strip()}")
            extracted = subprocess.run([*ar, "x", str(Path(archive).resolve())], cwd=folder,
                                       capture_output=True, text=True)
            if extracted.returncode != 0:
                raise LowbitError(f"cannot extract archive {archive}: {extracted.stderr.strip()}")
            for name in listed.stdout.split():
                renamed = folder / f"{n}_{name}"
                (folder / name).rename(renamed)
                members.append(renamed)
        out.unlink(missing_ok=True)
        run_tool([*ar, f"--format={ar_format}", "rcs", str(out), *map(str, members)], "archiving the objects")


@dataclass(frozen=True)
class Definitions:
    """The external symbols an archive defines: strong ones by member, and weak ones."""

    strong: dict[str, list[str]]  # symbol → members defining it
    weak: set[str]
    undefined: set[str]

    def duplicates(self) -> dict[str, list[str]]:
        return {name: members for name, members in self.strong.items() if len(members) > 1}


def _member(line: str, archive: str) -> tuple[str, str] | None:
    """(member, rest) of llvm-nm's ``ARCHIVE[member]: rest`` (``-P``) or ``ARCHIVE:member: rest``
    (``-m``); None for other lines."""
    if not line.startswith(archive):
        return None
    tail = line[len(archive):]
    if tail.startswith("[") and "]: " in tail:
        member, rest = tail[1:].split("]: ", 1)
    elif tail.startswith(":") and ": " in tail[1:]:
        member, rest = tail[1:].split(": ", 1)
    else:
        return None
    return member, rest


def read_definitions(archive: Path) -> Definitions:
    """The archive's external symbols, read with llvm-nm (Mach-O weak definitions need ``-m``:
    the portable letters show them as ``T``)."""
    nm = LLVM_NM.command()
    macho = Path(archive).read_bytes()[8:200].find(b"__.SYMDEF") >= 0
    argv = [*nm, "-A", "-m" if macho else "-P", str(archive)]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LowbitError(f"cannot read the symbols of {archive}: {proc.stderr.strip()}")
    strong: dict[str, list[str]] = defaultdict(list)
    weak: set[str] = set()
    undefined: set[str] = set()
    for line in proc.stdout.splitlines():
        if (parsed := _member(line, str(archive))) is None:
            continue
        member, rest = parsed
        if macho:  # "0000 (__TEXT,__text) [weak ][private ]external NAME", "(undefined) external NAME"
            flags, name = rest.rsplit(" ", 1)
            flags = flags.split()
            if "external" not in flags:
                continue
            if "(undefined)" in flags:
                undefined.add(name)
            elif "weak" in flags:
                weak.add(name)
            else:
                strong[name].append(member)
        else:  # "NAME TYPE [VALUE SIZE]"
            name, kind = rest.split()[:2]
            if kind == "U":
                undefined.add(name)
            elif kind in "WVwv":
                weak.add(name)
            elif kind.isupper():
                strong[name].append(member)
    defined = set(strong) | weak
    return Definitions(dict(strong), weak, undefined - defined)


def library_bin_symbol(prefix: str, macho: bool) -> str:
    """The symbol a model linked as ``system://PREFIX`` defines (Mach-O adds a leading ``_``)."""
    return f"{'_' if macho else ''}{prefix}{LIBRARY_BIN}"
