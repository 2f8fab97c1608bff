"""apps/ios without a Swift compiler: every .swift file parses (tree-sitter-swift, syntax only), and
the package, module map and XcodeGen spec point at the files and the `lowbit package` layout they
claim (the module map is imported by clang, as Swift's importer does); the Swift code calls only
what engine.h declares and sends only request fields the native engine accepts."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IOS = REPO / "apps" / "ios"
PACKAGE = IOS / "LowbitEngine"
ENGINE_H = REPO / "apps" / "native" / "include" / "lowbit" / "engine.h"
ENGINE_CC = REPO / "apps" / "native" / "src" / "engine.cc"
SWIFT_FILES = sorted(IOS.rglob("*.swift"))


@pytest.fixture(scope="module")
def swift_parser():
    why = "pip install tree-sitter tree-sitter-swift to parse Swift"
    ts = pytest.importorskip("tree_sitter", reason=why)
    swift = pytest.importorskip("tree_sitter_swift", reason=why)
    return ts.Parser(ts.Language(swift.language()))


def syntax_errors(parser, source: bytes) -> list[str]:
    errors: list[str] = []
    stack = [parser.parse(source).root_node]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            line, col = node.start_point
            text = source[node.start_byte:node.end_byte][:60].decode(errors="replace")
            what = f"missing {node.type}" if node.is_missing else "unexpected"
            errors.append(f"{line + 1}:{col + 1}: {what} {text!r}")
        elif node.has_error:
            stack.extend(node.children)
    return errors


def test_parser_rejects_broken_swift(swift_parser):
    assert syntax_errors(swift_parser, b"struct A { func f( { }\n")
    assert not syntax_errors(swift_parser, b"struct A { func f() async throws -> Int { 1 } }\n")


@pytest.mark.parametrize("path", SWIFT_FILES, ids=lambda p: str(p.relative_to(IOS)))
def test_swift_parses(swift_parser, path):
    assert syntax_errors(swift_parser, path.read_bytes()) == []


def test_swift_files_present():
    names = {p.relative_to(IOS).as_posix() for p in SWIFT_FILES}
    assert {"LowbitEngine/Package.swift", "LowbitEngine/Sources/LowbitEngine/LowbitEngine.swift",
            "LowbitEngine/Sources/LowbitEngine/OpenAITypes.swift",
            "LowbitEngine/Sources/LowbitEngine/AppConfig.swift",
            "LowbitChat/LowbitChat/LowbitChatApp.swift"} <= names


def test_package_targets_and_archives():
    text = (PACKAGE / "Package.swift").read_text()
    assert text.startswith("// swift-tools-version:5.9")
    assert ".iOS(.v14)" in text
    for path in re.findall(r'path:\s*"([^"]+)"', text):
        assert (PACKAGE / path).is_dir(), path
    assert (PACKAGE / "Sources/CLowbit/module.modulemap").is_file()
    # The archives force-loaded are those of the documented layout and TVM build.
    assert '"\\(distDir)/lib/libmodel_iphone.a"' in text
    for lib in ("libtvm_runtime.a", "libtvm_runtime_metal.a", "libtvm_ffi_static.a"):
        assert f'"\\(tvmLibDir)/{lib}"' in text
        assert lib in (IOS / "README.md").read_text()
    assert '"\\(packageDir)/dist"' in text and '"\\(packageDir)/tvm/lib"' in text
    assert '"-force_load"' in text and '.linkedLibrary("c++")' in text
    assert '.linkedFramework("Metal")' in text and '.linkedFramework("Foundation")' in text


def test_module_map_names_the_packaged_header():
    modulemap = PACKAGE / "Sources/CLowbit/module.modulemap"
    headers = re.findall(r'^\s*header\s+"([^"]+)"', modulemap.read_text(), re.M)
    assert len(headers) == 1
    resolved = (modulemap.parent / headers[0]).resolve()
    assert resolved == (PACKAGE / "dist/include/lowbit/engine.h").resolve()
    assert ENGINE_H.is_file()  # what `lowbit package` copies to dist/include/lowbit/engine.h
    assert "/dist\n" in (PACKAGE / ".gitignore").read_text()


def test_swift_calls_only_declared_c_functions():
    declared = set(re.findall(r"\b(lowbit_\w+)\s*\(", ENGINE_H.read_text()))
    engine_swift = (PACKAGE / "Sources/LowbitEngine/LowbitEngine.swift").read_text()
    used = set(re.findall(r"\b(lowbit_(?:engine_\w+|last_error))\b", engine_swift))
    assert used <= declared, used - declared
    assert used == declared, f"C functions the Swift API does not wrap: {declared - used}"


def _coding_keys(block: str) -> set[str]:
    keys = set()
    for item in re.findall(r"case\s+([^\n]+)", block):
        for part in item.split(","):
            m = re.match(r'\s*(\w+)(?:\s*=\s*"([^"]+)")?', part)
            if m:
                keys.add(m.group(2) or m.group(1))
    return keys


def _block(text: str, start: str) -> str:
    i = text.index(start)
    return text[i:text.index("}", i)]


def test_request_fields_are_accepted_by_the_engine():
    engine = ENGINE_CC.read_text()
    accepted: set[str] = set()
    for name in ("kCommonFields", "kChatFields", "kCompletionFields"):
        m = re.search(name + r"\s*=\s*\{(.*?)\};", engine, re.S)
        assert m, name
        accepted |= set(re.findall(r'"(\w+)"', m.group(1)))
    types = (PACKAGE / "Sources/LowbitEngine/OpenAITypes.swift").read_text()
    sent = _coding_keys(_block(types, "private enum SamplingKeys")) | {"messages", "prompt"}
    assert sent <= accepted, sent - accepted
    options = _coding_keys(_block((PACKAGE / "Sources/LowbitEngine/LowbitEngine.swift").read_text(),
                                  "case contextWindow"))
    assert options == {"context_window", "check_md5"}
    assert all(f'"{k}"' in (REPO / "apps/native/src/c_api.cc").read_text() for k in options)


def test_chunk_fields_are_what_the_engine_writes():
    engine = ENGINE_CC.read_text()
    types = (PACKAGE / "Sources/LowbitEngine/OpenAITypes.swift").read_text()
    raw = set(re.findall(r'=\s*"(\w+)"', types[types.index("public struct Usage"):]))
    assert raw, "no CodingKeys found"
    assert {k for k in raw if f'"{k}"' not in engine} == set()


def test_xcodegen_spec():
    yaml = pytest.importorskip("yaml")
    chat = IOS / "LowbitChat"
    spec = yaml.safe_load((chat / "project.yml").read_text())
    assert spec["options"]["deploymentTarget"]["iOS"] == "14.0"
    package_path = spec["packages"]["LowbitEngine"]["path"]
    assert (chat / package_path).resolve() == PACKAGE.resolve()
    target = spec["targets"]["LowbitChat"]
    sources = {s["path"]: s for s in target["sources"]}
    assert (chat / "LowbitChat").is_dir() and "LowbitChat" in sources
    bundle = sources["../LowbitEngine/dist/bundle"]  # the folder reference, `bundle/` in the app
    assert bundle["type"] == "folder"
    view_model = (chat / "LowbitChat/ChatViewModel.swift").read_text()
    assert 'appendingPathComponent("bundle"' in view_model
    assert {"package": "LowbitEngine"} in target["dependencies"]


def test_module_map_imports_with_clang(tmp_path):
    """The module map, as Swift's clang importer reads it: `@import CLowbit` from an Objective-C
    file, with the header where `lowbit package` puts it, declares the C API."""
    clang = shutil.which("clang")
    if clang is None:
        pytest.skip("clang not installed (targets/install-tools.sh)")
    package = tmp_path / "LowbitEngine"
    shutil.copytree(PACKAGE / "Sources/CLowbit", package / "Sources/CLowbit")
    (package / "dist/include/lowbit").mkdir(parents=True)
    shutil.copy(ENGINE_H, package / "dist/include/lowbit/engine.h")
    source = tmp_path / "use.m"
    source.write_text(
        "@import CLowbit;\n"
        "static void on_chunk(const char* json, void* data) { (void)json; (void)data; }\n"
        "int main(void) {\n"
        '  lowbit_engine* e = lowbit_engine_create("dir", "system://p", 0);\n'
        '  lowbit_engine_chat_completion(e, "{}", on_chunk, 0);\n'
        "  lowbit_engine_abort(e); lowbit_engine_reset(e); lowbit_engine_free(e);\n"
        "  return lowbit_last_error()[0];\n"
        "}\n")
    cmd = [clang, "-fsyntax-only", "-fmodules", f"-fmodules-cache-path={tmp_path / 'cache'}",
           f"-fmodule-map-file={package / 'Sources/CLowbit/module.modulemap'}", str(source)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (package / "dist/include/lowbit/engine.h").unlink()  # no dist: the import fails
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "engine.h" in done.stderr
