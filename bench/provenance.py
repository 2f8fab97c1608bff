"""Where a bench row came from: git commit, package versions, command, and the code version of
the calibration method that made its checkpoint.

A method's code version is a hash of the code its calibration runs: every module-level statement
of the module that registers it and of ``calibrate.py`` (which writes every checkpoint), and,
from the ``lowbit`` modules they import, the definitions they use, transitively (a function,
class or assignment, with the imports it needs). Docstrings, comments and layout do not count
(the statements are hashed as ``ast.unparse`` gives them), nor do functions the method never
reaches: a new decode-kernel reference in the shared quantizer module leaves calibration rows
as they were, a change to the quantizer math they call does not.

Rows measured before this definition carry the older *file* version: a hash of the whole files
of the method's import closure. Such a row still stands when that hash, recomputed from the
row's recorded commit, is what it recorded (so its files were that commit's) and the commit's
definition version equals today's (:func:`same_code`).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("lowbit", "torch", "transformers", "apache-tvm", "numpy")
CALIBRATE_MODULE = "lowbit.calib.calibrate"
BUILD_MODULES = ["lowbit.compiler.convert", "lowbit.compiler.compile"]
BUILD_FOLDERS = ("compiler", "targets")  # load kernels, models and backends by name as well
RESULTS_DIR = "bench/results/"
# A multi-threaded float reduction may split its sums by thread count, so a row records these and
# bench/verify.py re-runs it with the same values.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TVM_NUM_THREADS")
# The vector extensions that pick which kernels torch and TVM run: an AVX2 and an AVX-512 host
# sum floats in different orders, so the same command can give a different last digit.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "amx_tile")


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
            "argv": ["python", shown, *argv[1:]], "threads": threads(), "cpu": cpu()}


def cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, str | list[str]]:
    """The host CPU's model name, its vector extensions among :data:`ISA_FLAGS`, and the
    capability torch dispatches its CPU kernels for (when torch is loaded)."""
    fields: dict[str, str] = {}
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    found: dict[str, str | list[str]] = {"model": fields.get("model name", "unknown"),
                                         "isa": [f for f in ISA_FLAGS if f in flags]}
    if "torch" in sys.modules:
        found["torch_capability"] = sys.modules["torch"].backends.cpu.get_cpu_capability()
    return found


def compare_cpu(row: dict, now: dict) -> str:
    """"same" when ``now`` (a :func:`cpu` record) has the vector extensions and torch dispatch
    of the CPU ``row`` recorded, "other ISA" when not, "not recorded" for a row without one."""
    then = (row.get("provenance") or {}).get("cpu")
    if not then:
        return "not recorded"
    same = (then.get("isa") == now.get("isa")
            and then.get("torch_capability") == now.get("torch_capability"))
    return "same" if same else "other ISA"


def threads() -> dict[str, str | int]:
    """The thread-count variables set in this process's environment, and the intra-op thread
    count torch runs with (when torch is loaded)."""
    found: dict[str, str | int] = {v: os.environ[v] for v in THREAD_VARIABLES if v in os.environ}
    if "torch" in sys.modules:
        found["torch"] = sys.modules["torch"].get_num_threads()
    return found


def thread_environment(row: dict) -> dict[str, str]:
    """The thread-count variables to set to re-run ``row`` as it ran: those it recorded, and for a
    row that recorded torch's thread count only, OMP_NUM_THREADS equal to it."""
    recorded = (row.get("provenance") or {}).get("threads") or {}
    env = {v: str(recorded[v]) for v in THREAD_VARIABLES if v in recorded}
    if "torch" in recorded and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(recorded["torch"])
    return env


Reader = Callable[[str], "bytes | None"]  # repo-relative path → the file's bytes (None: absent)


def worktree_reader(repo: Path = REPO) -> Reader:
    """The files of the checkout at ``repo`` as they are now."""
    def read(path: str) -> bytes | None:
        file = repo / path
        return file.read_bytes() if file.is_file() else None
    return read


@cache
def commit_reader(commit: str, repo: Path = REPO) -> Reader:
    """The files of ``commit`` (``git show``)."""
    @cache
    def read(path: str) -> bytes | None:
        done = subprocess.run(["git", "-C", str(repo), "show", f"{commit}:{path}"], capture_output=True)
        return done.stdout if done.returncode == 0 else None
    return read


@cache
def module_path(name: str) -> str | None:
    """The repo-relative source file of module ``name`` (the current layout), or None: no
    ``lowbit`` module (a function's name, a package outside lowbit). A ``lowbit`` imported from
    another checkout is an error."""
    if not (name == "lowbit" or name.startswith("lowbit.")):
        return None
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:  # `from module import function`: the function is no module
        return None
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    path = Path(spec.origin).resolve()
    if not path.is_relative_to(REPO):  # hashing this checkout would describe code that did not run
        raise RuntimeError(f"{name} is imported from {path}, outside this checkout ({REPO}): "
                           "run bench/ with this checkout's environment")
    return str(path.relative_to(REPO))


def _package(name: str, path: str) -> str:
    return name if path.endswith("__init__.py") else name.rpartition(".")[0]


def _absolute(node: ast.ImportFrom, package: str) -> str:
    """The module an ``import from`` names, relative imports resolved against ``package``."""
    base = node.module or ""
    if node.level:
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
    return base


def _lowbit_imports(tree: ast.Module, package: str) -> set[str]:
    """The ``lowbit.*`` modules a source file imports (absolute or relative)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    return {m for m in found if m == "lowbit" or m.startswith("lowbit.")}


def source_closure(module: str, read: Reader | None = None) -> dict[str, str]:
    """``module`` and every ``lowbit`` module it imports, transitively: name → source file."""
    read = read or worktree_reader()
    seen: dict[str, str] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or name in ("lowbit", "lowbit.calib"):  # their __init__s import everything
            continue
        path = module_path(name)
        text = path and read(path)
        if not text:
            continue
        seen[name] = path
        todo += sorted(_lowbit_imports(ast.parse(text), _package(name, path)) - seen.keys())
    return seen


def hash_sources(files: list[tuple[str, bytes]]) -> str:
    """A short hash of (name, contents) pairs, in the given order."""
    h = hashlib.sha256()
    for name, data in files:
        h.update(f"{name}\0".encode() + data + b"\0")
    return h.hexdigest()[:16]


def file_version(modules: list[str], read: Reader) -> str:
    """The older code version: the whole files of the modules' import closure."""
    closure: dict[str, str] = {}
    for module in modules:
        closure |= source_closure(module, read)
    return hash_sources([(closure[n], read(closure[n]) or b"") for n in sorted(closure)])


class _Module:
    """One module's top-level statements: which names each defines, which it reads, and where
    the names it imports from other ``lowbit`` modules come from."""

    def __init__(self, name: str, path: str, text: bytes):
        tree = ast.parse(text)
        package = _package(name, path)
        body = [st for st in tree.body if not _is_docstring(st)]
        self.statements = [ast.unparse(_without_docstrings(st)) for st in body]
        self.defines: dict[str, list[int]] = {}
        self.reads = [_names_read(st) for st in body]
        # alias → (module, name or None: the module itself), per statement: the module's own
        # imports, then those inside the statement (a function's lazy imports)
        top = {}
        for i, st in enumerate(body):
            for name in _names_defined(st):
                self.defines.setdefault(name, []).append(i)
            if isinstance(st, (ast.Import, ast.ImportFrom)):
                top |= _aliases(st, package)
        self.imported = [top | {alias: source for node in ast.walk(st) if isinstance(node, (ast.Import, ast.ImportFrom))
                                for alias, source in _aliases(node, package).items()}
                         for st in body]
        self.always = [i for i, st in enumerate(body) if not _names_defined(st)]


def _aliases(node: ast.Import | ast.ImportFrom, package: str) -> dict[str, tuple[str, str | None]]:
    if isinstance(node, ast.ImportFrom):
        base = _absolute(node, package)
        return {a.asname or a.name: (base, a.name) for a in node.names}
    return {a.asname or a.name.split(".")[0]: (a.name if a.asname else a.name.split(".")[0], None)
            for a in node.names}


def _is_docstring(st: ast.stmt) -> bool:
    return isinstance(st, ast.Expr) and isinstance(st.value, ast.Constant) and isinstance(st.value.value, str)


def _without_docstrings(st: ast.stmt) -> ast.stmt:
    for node in ast.walk(st):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body and _is_docstring(node.body[0]):
            node.body = node.body[1:] or [ast.Pass()]
    return st


def _names_defined(st: ast.stmt) -> list[str]:
    if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [st.name]
    if isinstance(st, (ast.Import, ast.ImportFrom)):
        return [a.asname or a.name.split(".")[0] for a in st.names]
    if isinstance(st, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        targets = st.targets if isinstance(st, ast.Assign) else [st.target]
        return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    return []


def _names_read(st: ast.stmt) -> set[tuple[str, str | None]]:
    """(name, attribute or None) for every name the statement reads: ``mod.f`` gives (mod, f)."""
    found: set[tuple[str, str | None]] = set()
    attributes = set()
    for node in ast.walk(st):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            found.add((node.value.id, node.attr))
            attributes.add(id(node.value))
    for node in ast.walk(st):
        if isinstance(node, ast.Name) and id(node) not in attributes:
            found.add((node.id, None))
    return found


def definition_version(modules: list[str], read: Reader) -> str:
    """The code version: every statement of ``modules`` and the definitions they reach."""
    parsed: dict[str, _Module | None] = {}

    def get(name: str) -> _Module | None:
        if name not in parsed:
            path = module_path(name)
            text = path and read(path)
            parsed[name] = _Module(name, path, text) if text else None
        return parsed[name]

    included: set[tuple[str, int]] = set()
    todo: list[tuple[str, int]] = []
    for name in modules:
        if mod := get(name):
            todo += [(name, i) for i in range(len(mod.statements))]

    def want(module: str, symbol: str | None) -> None:
        """Queue what ``symbol`` of ``module`` needs (all of the module when None)."""
        mod = get(module)
        if mod is None:
            return
        if symbol is None:
            todo.extend((module, i) for i in range(len(mod.statements)))
        elif symbol in mod.defines:
            todo.extend((module, i) for i in mod.defines[symbol])
        elif get(f"{module}.{symbol}"):  # `from package import module`
            want(f"{module}.{symbol}", None)
        todo.extend((module, i) for i in mod.always)  # module-level code runs on import

    while todo:
        module, i = todo.pop()
        if (module, i) in included:
            continue
        included.add((module, i))
        mod = parsed[module]
        imported = mod.imported[i]
        for name, attribute in mod.reads[i]:
            if name in imported:
                source, symbol = imported[name]
                if symbol is None or get(f"{source}.{symbol}"):  # a module alias: mod.attribute
                    target = source if symbol is None else f"{source}.{symbol}"
                    if target in ("lowbit", "lowbit.calib"):  # their __init__s import everything
                        continue
                    want(target, attribute)
                else:
                    want(source, symbol)
            elif name in mod.defines:
                todo.extend((module, j) for j in mod.defines[name])
    return hash_sources(sorted((m, parsed[m].statements[i].encode()) for m, i in included))


def method_modules(method: str) -> list[str]:
    """The modules whose statements all count: the method's and ``calibrate.py``."""
    from lowbit.calib import METHODS

    return [METHODS[method].fn.__module__, CALIBRATE_MODULE]


@cache
def code_version(method: str) -> str:
    """The code version of ``method``'s checkpoints ("fp": no calibration code, a fixed value)."""
    if method == "fp":
        return "fp"
    return definition_version(method_modules(method), worktree_reader())


def same_code(method: str, recorded: str, commit: str) -> bool:
    """Whether a row that recorded the file version ``recorded`` at ``commit`` ran today's code:
    the commit's files hash to ``recorded`` and its definition version is today's."""
    read = commit_reader(commit)
    modules = method_modules(method)
    return (file_version(modules, read) == recorded
            and definition_version(modules, read) == code_version(method))


@cache
def build_version(repo: Path = REPO) -> str:
    """The code version of converted folders and compiled libraries: the whole files of the
    converter's and the compiler's import closure and of every module in their folders."""
    read = worktree_reader(repo)
    paths = {path for module in BUILD_MODULES for path in source_closure(module, read).values()}
    if not paths:
        raise RuntimeError("build_version: lowbit is not importable here (activate its environment)")
    paths |= {str(f.relative_to(repo)) for folder in BUILD_FOLDERS for f in (repo / folder).rglob("*.py")}
    return hash_sources([(path, read(path) or b"") for path in sorted(paths)])


def build_dir(root: Path) -> Path:
    """Where a bench keeps what today's converter and compiler built: ``root/build-<version>``."""
    return root / f"build-{build_version()}"
