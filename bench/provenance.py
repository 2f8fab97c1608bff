"""Where a bench row came from: git commit, package versions, command, and the code version of
the calibration method that made its checkpoint.

A method's code version is a hash of its source closure: the module that registers it plus every
``lowbit`` module it imports, transitively (calibrate.py's too, which writes every checkpoint).
Following the imports keeps the set right as files are split or added; the cost is that a change
to a shared module (the quantizer, the fused format, model loading) marks every method's rows
stale, which is what it should do.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import subprocess
import sys
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("lowbit", "torch", "transformers", "apache-tvm", "numpy")
CALIBRATE_MODULE = "lowbit.calib.calibrate"
RESULTS_DIR = "bench/results/"


def _git(repo: Path, *args: str) -> str | None:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(repo: Path = REPO, base: str | None = None) -> dict:
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout at ``repo``.

    ``commit`` is ``base`` (default HEAD). ``dirty`` says whether any tracked file outside
    ``bench/results/`` differs from it now: the result files are the bench's own output, so a
    script that rewrites them after every row does not mark its next row dirty, while a commit
    or an edit made while the bench ran does.
    """
    commit = base or _git(repo, "rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    changed = _git(repo, "diff", "--name-only", commit, "--", ".", f":(exclude){RESULTS_DIR}")
    return {"commit": commit, "dirty": None if changed is None else bool(changed)}


STARTED_AT = _git(REPO, "rev-parse", "HEAD")  # the code this process imported


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (None where it is not installed)."""
    versions = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def record(argv: list[str] | None = None) -> dict:
    """The provenance every bench script stores beside its results: commit, versions, command.

    The commit is the one checked out when this process started (the code it imported); a row
    recorded after the checkout moved or was edited is marked dirty.
    """
    argv = sys.argv if argv is None else argv
    script = Path(argv[0]).resolve()
    shown = str(script.relative_to(REPO)) if script.is_relative_to(REPO) else argv[0]
    return {**git_state(base=STARTED_AT), "packages": package_versions(),
            "argv": ["python", shown, *argv[1:]]}


def _lowbit_imports(path: Path, package: str) -> set[str]:
    """The ``lowbit.*`` modules a source file imports (absolute or relative)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    return {m for m in found if m == "lowbit" or m.startswith("lowbit.")}


def source_closure(module: str) -> dict[str, Path]:
    """``module`` and every ``lowbit`` module it imports, transitively: name → source file."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or name in ("lowbit", "lowbit.calib"):  # their __init__s import everything
            continue
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:  # `from module import function`: the function is no module
            spec = None
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            continue
        path = Path(spec.origin)
        seen[name] = path
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        todo += sorted(_lowbit_imports(path, package) - seen.keys())
    return seen


def hash_sources(paths: list[Path]) -> str:
    """A short hash of the files' contents, in the given order (names relative to the repo)."""
    h = hashlib.sha256()
    for path in paths:
        name = path.resolve().relative_to(REPO) if path.resolve().is_relative_to(REPO) else path
        h.update(f"{name}\0".encode() + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@cache
def code_version(method: str) -> str:
    """The code version of ``method``'s checkpoints ("fp": no calibration code, a fixed value)."""
    if method == "fp":
        return "fp"
    from lowbit.calib import METHODS

    module = METHODS[method].fn.__module__
    closure = source_closure(module) | source_closure(CALIBRATE_MODULE)
    return hash_sources([closure[name] for name in sorted(closure)])
