"""``lowbit package``: the documented layout for android and iphone, every file checked; the iPhone
archive linked into a program; mismatched prefixes, versions and weights refused in one line."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from required_tools import require, require_any

from lowbit.artifact import CHAT_CONFIG, METADATA_FORMAT, TENSOR_CACHE, LibraryMetadata
from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.packager.archive import merge_archives, read_definitions
from lowbit.packager.package import verify_package
from lowbit.targets.tools import ZIG, zig_lib_dir

ELF_AARCH64 = 183
MACHO_ARM64 = (0xFEEDFACF, 0x0100000C)
ENGINE_API = ("lowbit_engine_create", "lowbit_engine_chat_completion", "lowbit_engine_completion",
              "lowbit_engine_abort", "lowbit_engine_reset", "lowbit_engine_free", "lowbit_last_error")
REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _members(archive: Path, into: Path) -> list[Path]:
    into.mkdir(parents=True)
    subprocess.run([require("llvm-ar", "reads archives"), "x", str(archive.resolve())], cwd=into, check=True)
    return sorted(into.iterdir())


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _package(config: dict, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    out = tmp_path / name
    result = CliRunner().invoke(main, ["package", "--config", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def android_dist(tiny_mlc, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("package-android")
    config = {"device": "android", "model_list": [
        {"model": str(tiny_mlc("q4f16_1")), "model_id": "tiny-q4", "estimated_vram_bytes": 300_000_000,
         "bundle_weight": True, "overrides": {"context_window_size": 128, "prefill_chunk_size": 64}},
        {"model": str(tiny_mlc("q4f32_1")), "model_id": "tiny-q4f32", "estimated_vram_bytes": 400_000_000},
    ]}
    return _package(config, root, "dist")


def test_android_layout(android_dist, tiny_mlc):
    """Every file of the documented layout, and nothing else; the archive holds both models'
    aarch64 ELF objects, needing nothing but the TVM runtime's C ABI."""
    source = tiny_mlc("q4f16_1")
    shards = sorted(p.name for p in source.glob("params_shard_*.bin"))
    assert _files(android_dist) == {
        "lib/libmodel_android.a", "lib/lowbit-libs.json", "bundle/lowbit-app-config.json",
        f"bundle/tiny-q4/{CHAT_CONFIG}", f"bundle/tiny-q4/{TENSOR_CACHE}", *(f"bundle/tiny-q4/{s}" for s in shards)}
    app = json.loads((android_dist / "bundle/lowbit-app-config.json").read_text())
    libs = json.loads((android_dist / "lib/lowbit-libs.json").read_text())
    assert app["device"] == libs["device"] == "android" and app["metadata_format"] == METADATA_FORMAT
    assert libs["engine"] is False  # Android's Gradle build compiles apps/native with the NDK
    prefixes = [m["system_lib_prefix"] for m in libs["models"]]
    assert [m["model_id"] for m in libs["models"]] == ["tiny-q4", "tiny-q4f32"] and len(set(prefixes)) == 2
    assert app["model_list"] == [
        {"model_id": "tiny-q4", "model_lib": f"system://{prefixes[0]}", "estimated_vram_bytes": 300_000_000,
         "model_path": "tiny-q4"},
        {"model_id": "tiny-q4f32", "model_lib": f"system://{prefixes[1]}", "estimated_vram_bytes": 400_000_000},
    ]
    first = LibraryMetadata.from_json(json.dumps(libs["models"][0]["metadata"]))
    assert (first.target, first.device, first.quantization) == ("android", "opencl", "q4f16_1")
    assert (first.context_window_size, first.prefill_chunk_size) == (128, 64)  # the overrides reach the build
    bundled = android_dist / "bundle/tiny-q4"
    chat = json.loads((bundled / CHAT_CONFIG).read_text())
    original = json.loads((source / CHAT_CONFIG).read_text())
    assert chat["model_config"]["context_window_size"] == chat["context_window_size"] == 128
    assert {k: v for k, v in chat.items() if k not in ("context_window_size", "prefill_chunk_size", "model_config")} == \
        {k: v for k, v in original.items() if k not in ("context_window_size", "prefill_chunk_size", "model_config")}
    for name in (TENSOR_CACHE, *shards):
        assert _md5(bundled / name) == _md5(source / name), name

    archive = android_dist / "lib/libmodel_android.a"
    objects = _members(archive, android_dist.parent / "objects")
    assert len(objects) >= 4
    for obj in objects:
        head = obj.read_bytes()[:20]
        assert head[:4] == b"\x7fELF" and struct.unpack("<H", head[18:20])[0] == ELF_AARCH64, obj.name
    symbols = read_definitions(archive)
    for prefix in prefixes:
        assert f"{prefix}__tvm_ffi__library_bin" in symbols.strong
    assert symbols.undefined and all(s.startswith(("TVMFFI", "TVMBackend")) for s in symbols.undefined), symbols.undefined


def _copy(dist: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "dist"
    shutil.copytree(dist, copy)
    return copy


def _edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(("tamper", "message"), [
    (lambda d: _edit_json(d / "bundle/lowbit-app-config.json",
                          lambda c: c["model_list"][1].update(model_lib="system://llama_q4f32_1_00000000_")),
     "model 'tiny-q4f32': model_lib 'system://llama_q4f32_1_00000000_' is not among the packaged libraries"),
    (lambda d: _edit_json(d / "bundle/lowbit-app-config.json", lambda c: c.update(metadata_format=1)),
     "app config has metadata format 1; this lowbit's engine reads format 2 (package again)"),
    (lambda d: _edit_json(d / "lib/lowbit-libs.json", lambda c: c["models"][0]["metadata"].update(format=3)),
     "metadata format 3 is newer than this lowbit understands"),
    (lambda d: _edit_json(d / "bundle/tiny-q4/mlc-chat-config.json", lambda c: c.update(quantization="q4f32_1")),
     "is for quantization 'q4f16_1' but"),
    (lambda d: next((d / "bundle/tiny-q4").glob("params_shard_*.bin")).write_bytes(b"\0" * 10),
     "has 10 bytes, expected"),
    (lambda d: (d / "bundle/tiny-q4/mlc-chat-config.json").unlink(), "model 'tiny-q4': bundled folder"),
    (lambda d: (d / "lib/lowbit-libs.json").unlink(), "is not a lowbit package folder (no lib/lowbit-libs.json)"),
    (lambda d: (d / "lib/libmodel_android.a").unlink(), "lib/libmodel_android.a is missing"),
    (lambda d: _edit_json(d / "bundle/lowbit-app-config.json", lambda c: c.update(device="iphone")),
     "app config is for device 'iphone', libraries for 'android'"),
])
def test_verify_refuses_a_mismatch(android_dist, tmp_path, tamper, message):
    """`lowbit package --verify` (also the last step of packaging) names the model at fault."""
    dist = _copy(android_dist, tmp_path)
    tamper(dist)
    result = CliRunner().invoke(main, ["package", "--verify", str(dist)])
    assert result.exit_code == 1 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_verify_refuses_another_archive_and_duplicates(android_dist, tmp_path):
    """An archive from another package lacks this app's prefixes; a model linked twice defines
    its symbols twice."""
    dist = _copy(android_dist, tmp_path)
    archive = dist / "lib/libmodel_android.a"
    prefix = json.loads((dist / "lib/lowbit-libs.json").read_text())["models"][0]["system_lib_prefix"]
    only_second = tmp_path / "second.a"
    kept = [m for m in _members(archive, tmp_path / "m") if prefix not in subprocess.run(
        [require("llvm-nm", "lists symbols"), "--defined-only", "-j", str(m)], capture_output=True, text=True).stdout]
    subprocess.run([require("llvm-ar", "writes archives"), "rcs", str(only_second), *map(str, kept)], check=True)
    shutil.copy(only_second, archive)
    with pytest.raises(LowbitError, match=f"model 'tiny-q4': libmodel_android.a has no library with prefix {prefix}"):
        verify_package(dist)
    merge_archives([android_dist / "lib/libmodel_android.a"] * 2, archive, "gnu")
    with pytest.raises(LowbitError, match=r"symbol \S+ is defined by 0_\S+ and 1_\S+"):
        verify_package(dist)


@pytest.mark.parametrize(("config", "message"), [
    ({"device": "ios", "model_list": []}, "device must be one of android, iphone (got 'ios')"),
    ({"device": "iphone", "model_list": []}, "model_list must be a non-empty list"),
    ({"device": "iphone", "model_list": [{"model": "HF://mlc-ai/x", "model_id": "x", "estimated_vram_bytes": 1}]},
     "is a hub address; lowbit downloads nothing"),
    ({"device": "iphone", "model_list": [{"model": "m", "model_id": "../x", "estimated_vram_bytes": 1}]},
     "model_id '../x' must be letters"),
    ({"device": "iphone", "model_list": [{"model": "m", "model_id": "x", "estimated_vram_bytes": 0}]},
     "estimated_vram_bytes must be a positive integer"),
    ({"device": "iphone", "model_list": [{"model": "m", "model_id": "x", "estimated_vram_bytes": 1,
                                          "overrides": {"tensor_parallel_shards": 2}}]},
     "override 'tensor_parallel_shards' is not supported (supported: context_window_size, prefill_chunk_size)"),
    ({"device": "iphone", "model_list": [{"model": "m", "model_id": "x", "estimated_vram_bytes": 1,
                                          "bundle_weights": True}]}, "unknown field 'bundle_weights'"),
    ({"device": "iphone", "model_list": [{"model": "m", "model_id": "x", "estimated_vram_bytes": 1},
                                         {"model": "n", "model_id": "x", "estimated_vram_bytes": 1}]},
     "model_id 'x' appears twice"),
    ({"device": "iphone", "model_list": [{"model": "missing", "model_id": "x", "estimated_vram_bytes": 1}]},
     "is not an MLC model folder"),
])
def test_bad_config_is_one_line_and_writes_nothing(tmp_path, config, message):
    path = tmp_path / "lowbit-package.json"
    path.write_text(json.dumps(config))
    result = CliRunner().invoke(main, ["package", "--config", str(path), "-o", str(tmp_path / "dist")])
    assert result.exit_code == 1 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lowbit-package.json"]


# -- iphone: models and the engine in one archive, linked into a program ----------------------------
IOS_MAIN = """#include "lowbit/engine.h"
extern const char {bin}[];
int main(void) {{
  lowbit_engine* e = lowbit_engine_create("model", "system://{prefix}", 0);
  if (!e) return lowbit_last_error()[0] + {bin}[0];
  lowbit_engine_chat_completion(e, "{{}}", 0, 0);
  lowbit_engine_completion(e, "{{}}", 0, 0);
  lowbit_engine_abort(e);
  lowbit_engine_reset(e);
  lowbit_engine_free(e);
  return 0;
}}
"""
# Only the stub's platform matters: the link leaves system symbols to dynamic lookup, and the test
# then checks each one left against Apple's libSystem export list.
STUB_LIBSYSTEM = """--- !tapi-tbd
tbd-version: 4
targets: [ arm64-ios ]
install-name: '/usr/lib/libSystem.B.dylib'
current-version: 1311
exports:
  - targets: [ arm64-ios ]
    symbols: [ dyld_stub_binder ]
...
"""
# libc++ and its ABI library: what iOS's libc++.dylib and libc++abi.dylib export.
CXX_RUNTIME = re.compile(r"^__(ZNSt3__1|ZNKSt3__1|ZSt|ZNSt|ZNKSt|ZTVNSt3__1|ZTINSt3__1|ZTTNSt3__1|ZTISt|ZTVSt|"
                         r"ZTVN10__cxxabiv1|ZTIN10__cxxabiv1|Znwm|Znam|ZdlPv|ZdaPv)|"
                         r"^___cxa_|^___gxx_personality_v0$|^__Unwind_|^___dynamic_cast$")


def _exports(library: Path) -> set[str]:
    """A shared library's dynamic symbols, as Mach-O names (a leading underscore)."""
    out = subprocess.run([require("llvm-nm", "lists symbols"), "-D", "--defined-only", "-j", str(library)],
                         capture_output=True, text=True, check=True).stdout
    return {"_" + s.split("@")[0] for s in out.split()}


def _libsystem_exports() -> set[str]:
    """macOS's libSystem export list, from zig's copy of Apple's libSystem.tbd (the iOS SDK's
    libSystem exports the same C library)."""
    tbd = zig_lib_dir(ZIG.command()) / "libc" / "darwin" / "libSystem.tbd"
    return set(re.findall(r"'?(_[A-Za-z0-9_$.]+)'?", tbd.read_text())) | {"dyld_stub_binder"}


def test_iphone_archive_links_into_a_program(tiny_mlc, tmp_path):
    """Models plus engine in one darwin archive: a program calling the whole C API links with
    ld64 (no duplicate symbol), and every symbol left undefined is the TVM runtime's, libSystem's
    or libc++'s."""
    if ZIG.find() is None:
        require("zig", "compiles the engine for iOS; pip install ziglang")
    clang = require("clang", "compiles the test program for iOS")
    ld64 = require_any(("ld64.lld", "ld64.lld-14"), "links Mach-O (Debian lld)")
    dist = _package({"device": "iphone", "model_list": [
        {"model": str(tiny_mlc("q4f16_1")), "model_id": "tiny", "estimated_vram_bytes": 300_000_000,
         "bundle_weight": True}]}, tmp_path, "dist")
    shards = [f"bundle/tiny/{p.name}" for p in tiny_mlc("q4f16_1").glob("params_shard_*.bin")]
    assert _files(dist) == {"lib/libmodel_iphone.a", "lib/lowbit-libs.json", "include/lowbit/engine.h",
                            "bundle/lowbit-app-config.json", f"bundle/tiny/{CHAT_CONFIG}", f"bundle/tiny/{TENSOR_CACHE}",
                            *shards}
    assert (dist / "include/lowbit/engine.h").read_bytes() == (REPO / "apps/native/include/lowbit/engine.h").read_bytes()
    archive = dist / "lib/libmodel_iphone.a"
    assert archive.read_bytes()[8:100].find(b"__.SYMDEF") >= 0  # the index Apple's linker reads
    for obj in _members(archive, tmp_path / "objects"):
        assert struct.unpack("<II", obj.read_bytes()[:8]) == MACHO_ARM64, obj.name
    prefix = json.loads((dist / "lib/lowbit-libs.json").read_text())["models"][0]["system_lib_prefix"]
    (tmp_path / "main.c").write_text(IOS_MAIN.format(bin=f"{prefix}__tvm_ffi__library_bin", prefix=prefix))
    subprocess.run([clang, "-target", "arm64-apple-ios14.0", "-I", str(dist / "include"), "-c",
                    str(tmp_path / "main.c"), "-o", str(tmp_path / "main.o")], check=True)
    sdk = tmp_path / "sdk" / "usr" / "lib"
    sdk.mkdir(parents=True)
    (sdk / "libSystem.tbd").write_text(STUB_LIBSYSTEM)
    app = tmp_path / "app"
    link = subprocess.run([ld64, "-arch", "arm64", "-platform_version", "ios", "14.0", "17.0",
                           "-syslibroot", str(tmp_path / "sdk"), "-lSystem", "-o", str(app), str(tmp_path / "main.o"),
                           "-all_load", str(archive), "-undefined", "dynamic_lookup"], capture_output=True, text=True)
    assert link.returncode == 0, link.stderr[-3000:]  # a duplicate symbol fails the link
    undefined = set(subprocess.run([require("llvm-nm", "lists symbols"), "-u", "-j", str(app)],
                                   capture_output=True, text=True, check=True).stdout.split())
    import tvm
    import tvm_ffi

    tvm_runtime = _exports(Path(tvm.__file__).parent / "lib" / "libtvm_runtime.so") | \
        _exports(Path(tvm_ffi.__file__).parent / "lib" / "libtvm_ffi.so")
    system = _libsystem_exports()
    unexplained = sorted(s for s in undefined if s not in tvm_runtime and s not in system and not CXX_RUNTIME.match(s))
    assert not unexplained, unexplained
    assert any(s in tvm_runtime for s in undefined)  # the TVM runtime is the app's to link
    defined = set(subprocess.run([require("llvm-nm", "lists symbols"), "--defined-only", "-j", str(app)],
                                 capture_output=True, text=True, check=True).stdout.split())
    assert {"_" + f for f in ENGINE_API} <= defined
    assert sum(s.startswith(f"___tvm_ffi_{prefix}") for s in defined) > 20  # the model's kernels made it in
