"""apps/android's JNI bridge on the host: liblowbit_jni.so built for x86-64 from the same CMake
file as for Android, with a model compiled for ``llvm-static`` linked in, loaded into a JVM and
driven through ``ai.lowbit.LowbitEngine`` by plain Java (tests/apps/android/JniCheck.java) and
the app's Kotlin ChatSession; the replies are compared with the Python engine's (`lowbit run`'s).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from native_build import missing, run

from lowbit.artifact import static_metadata_path
from lowbit.cache import cache_dir
from lowbit.runtime.engine import Engine, GenerationConfig
from lowbit.runtime.tokenizer import ConvTemplate

pytestmark = pytest.mark.slow

LOWBIT4J = Path(__file__).resolve().parents[2] / "apps" / "android" / "lowbit4j" / "src" / "main"
CHAT_SESSION = LOWBIT4J.parents[2] / "app" / "src" / "main" / "java" / "ai" / "lowbit" / "chat" / "ChatSession.kt"
DRIVERS = Path(__file__).parent / "android"
NEEDED_BY = "the Android bridge's host test"

RAW = [("The capital of France is", 12), ("Zürich 😀 日本, naïve café:", 12)]  # greedy completions
TURNS = ["Name three colours.", "And one fruit? 🍎"]  # a greedy two-turn chat, 12 tokens a reply


@dataclass(frozen=True)
class JniBuild:
    library_dir: Path
    classes: Path
    model_dir: Path
    model_lib: str  # system://PREFIX


def _package_dir(name: str) -> Path:
    return Path(importlib.util.find_spec(name).submodule_search_locations[0])


@pytest.fixture(scope="module")
def jni_build(tiny_chat, tiny_chat_library, tmp_path_factory) -> JniBuild:
    """liblowbit_jni.so for the host (CMake build cached between runs) with the tiny model's
    llvm-static archive, and the Java sources plus the driver compiled by javac."""
    for tool, package in (("cmake", "cmake"), ("javac", "openjdk-17-jdk-headless")):
        if shutil.which(tool) is None:
            missing(package, NEEDED_BY)
    if not Path("/usr/include/nlohmann/json.hpp").is_file():
        missing("nlohmann-json3-dev", NEEDED_BY)
    tmp = tmp_path_factory.mktemp("android-jni")
    archive = tiny_chat_library("llvm-static", ".a")
    prefix = json.loads(static_metadata_path(archive).read_text())["system_lib_prefix"]
    tvm_ffi = _package_dir("tvm_ffi")
    ffi_include = [tvm_ffi / "include", tvm_ffi / "3rdparty" / "dlpack" / "include"]
    tvm_libs = [tvm_ffi / "lib" / "libtvm_ffi.so", _package_dir("tvm") / "lib" / "libtvm_runtime.so"]
    build = cache_dir() / "android-jni-build"
    java_home = Path(os.path.realpath(shutil.which("javac"))).parents[1]
    configure = run(["cmake", "-S", LOWBIT4J / "cpp", "-B", build, "-DCMAKE_BUILD_TYPE=Release",
                     f"-DLOWBIT_MODEL_ARCHIVE={archive}", f"-DLOWBIT_TVM_FFI_INCLUDE={';'.join(map(str, ffi_include))}",
                     f"-DLOWBIT_TVM_LIBS={';'.join(map(str, tvm_libs))}"],
                    env={**os.environ, "JAVA_HOME": str(java_home)})
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    built = run(["cmake", "--build", build, "-j2", "--target", "lowbit_jni"])
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    classes = tmp / "classes"
    sources = [*sorted((LOWBIT4J / "java" / "ai" / "lowbit").glob("*.java")), DRIVERS / "JniCheck.java"]
    javac = run(["javac", "-Xlint:all", "-Werror", "-d", classes, *sources])
    assert javac.returncode == 0, javac.stderr
    return JniBuild(build, classes, tiny_chat.mlc_dir, f"system://{prefix}")


@pytest.fixture(scope="module")
def python_replies(tiny_chat) -> dict:
    """The Python engine's greedy completions and chat turns, in the order the JVM asks them."""
    engine = Engine(tiny_chat.mlc_dir, tiny_chat.lib)
    greedy = engine.sampling_params(temperature=0)
    stop_ids = engine.default_stop_token_ids()
    replies: dict = {"raw": [], "chat": []}
    for prompt, max_tokens in RAW:
        ids = engine.tokenizer.encode(prompt)
        text = "".join(engine.generate(ids, GenerationConfig(max_tokens, greedy, (), stop_ids)))
        replies["raw"].append({"prompt": prompt, "max_tokens": max_tokens, "text": text, "prompt_tokens": len(ids),
                               "completion_tokens": len(engine.last_stats.tokens)})
    conv = ConvTemplate(engine.chat_config["conv_template"])
    messages: list[dict] = []
    for turn in TURNS:
        messages.append({"role": "user", "content": turn})
        ids = conv.prefix_ids + engine.tokenizer.encode(conv.render(messages), add_special_tokens=False)
        config = GenerationConfig(12, greedy, tuple(engine.chat_stop_strings()), stop_ids)
        text = "".join(engine.generate(ids, config))
        replies["chat"].append({"messages": list(messages), "text": text, "prompt_tokens": len(ids)})
        messages.append({"role": "assistant", "content": text})
    return replies


def streamed(chunks_file: Path, chat: bool) -> tuple[str, dict]:
    """The reply's text and usage from the chunks the JVM received."""
    chunks = [json.loads(line) for line in chunks_file.read_text(encoding="utf-8").splitlines()]
    pieces = [c["choices"][0]["delta"].get("content") or "" if chat else c["choices"][0]["text"]
              for c in chunks if c["choices"]]
    assert not chunks[-1]["choices"]
    return "".join(pieces), chunks[-1]["usage"]


def test_java_engine_generates_what_python_generates(jni_build, python_replies, tmp_path):
    """The app config read by AppConfig; greedy completions (one with an emoji and accents) and a
    two-turn chat through the Java class, loaded as the config's system://PREFIX, stream the
    Python engine's text and token counts; then errors (one line each), Unicode in both
    directions, abort and exceptions from the listener, and close()."""
    expected = python_replies
    for i, case in enumerate(expected["raw"]):
        request = {"prompt": case["prompt"], "temperature": 0, "max_tokens": case["max_tokens"]}
        (tmp_path / f"completion-{i}.request.json").write_text(json.dumps(request, ensure_ascii=False), encoding="utf-8")
    for i, case in enumerate(expected["chat"]):
        request = {"messages": case["messages"], "temperature": 0, "max_tokens": 12}
        (tmp_path / f"chat-{i}.request.json").write_text(json.dumps(request, ensure_ascii=False), encoding="utf-8")
    app_config = {"device": "android", "metadata_format": 2, "model_list": [  # as `lowbit package` writes it
        {"model_id": "tiny-chat", "model_lib": jni_build.model_lib, "estimated_vram_bytes": 50_000_000,
         "model_path": "tiny-chat"},
        {"model_id": "café-😀", "model_lib": "system://other_", "estimated_vram_bytes": 3_000_000_000}]}
    (tmp_path / "lowbit-app-config.json").write_text(json.dumps(app_config, ensure_ascii=False, indent=1), encoding="utf-8")
    result = run(["java", f"-Djava.library.path={jni_build.library_dir}", "-cp", jni_build.classes, "JniCheck",
                  jni_build.model_dir, tmp_path], timeout=300)
    assert result.returncode == 0 and "jni: 14 passed, 0 failed" in result.stdout, result.stdout + result.stderr[-3000:]
    for i, case in enumerate(expected["raw"]):
        text, usage = streamed(tmp_path / f"completion-{i}.chunks", chat=False)
        assert text == case["text"], (case["prompt"], text)
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (case["prompt_tokens"], case["completion_tokens"])
    for i, case in enumerate(expected["chat"]):
        text, usage = streamed(tmp_path / f"chat-{i}.chunks", chat=True)
        assert (text, usage["prompt_tokens"]) == (case["text"], case["prompt_tokens"]), i
        assert usage["completion_tokens"] > 0


def test_kotlin_chat_session(jni_build, python_replies, tmp_path):
    """The app's ChatSession (Kotlin, no Android classes) compiled by kotlinc and run on the JVM:
    its two greedy turns are the Python engine's."""
    if shutil.which("kotlinc") is None:
        pytest.skip("kotlinc is not installed: apt-get install -y kotlin (Debian's 1.3) compiles the app's ChatSession")
    jar = tmp_path / "chat-session.jar"
    kotlinc = run(["kotlinc", "-include-runtime", "-cp", jni_build.classes, "-d", jar, CHAT_SESSION,
                   DRIVERS / "ChatSessionCheck.kt"], timeout=300)
    assert kotlinc.returncode == 0, kotlinc.stderr
    out = tmp_path / "replies.json"
    result = run(["java", f"-Djava.library.path={jni_build.library_dir}", "-cp", f"{jni_build.classes}:{jar}",
                  "ChatSessionCheckKt", jni_build.model_dir, jni_build.model_lib, out, *TURNS], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert json.loads(out.read_text(encoding="utf-8")) == [c["text"] for c in python_replies["chat"]]
