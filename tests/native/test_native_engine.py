"""The native engine (apps/native) against the Python reference, through its CTest suite.

Each test writes its fixture from the Python implementation (runtime/sampler.py, ConvTemplate,
the Python engine on the bundled model) into the build's manifest and runs one CTest test.
"""

from __future__ import annotations

import json
import shutil
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
from native_build import NATIVE, run, run_ctest, write_fixture

from lowbit.artifact import static_metadata_path
from lowbit.compiler.chat_config import CONV_TEMPLATES
from lowbit.runtime.engine import Engine, GenerationConfig
from lowbit.runtime.sampler import Sampler, SamplingParams
from lowbit.runtime.tokenizer import ConvTemplate

pytestmark = pytest.mark.slow


# -- conv_template -------------------------------------------------------------------------------
TWO_SEPS = {  # exercises what chatml does not: two seps, no role after the system, prefix ids
    "name": "two-seps", "system_template": "[SYS]{system_message}[/SYS]", "system_message": "be brief",
    "system_prefix_token_ids": [1], "add_role_after_system_message": False,
    "roles": {"user": "USER", "assistant": "ASSISTANT", "tool": "TOOL"},
    "role_templates": {"user": "<u>{user_message}</u>", "assistant": "{assistant_message}", "tool": "{tool_message}"},
    "seps": [" ", "</s>"], "role_content_sep": ": ", "role_empty_sep": ":", "stop_str": ["</s>"], "stop_token_ids": [2],
}
CHATS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}],
    [{"role": "system", "content": "S1. "}, {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
     {"role": "system", "content": "S2"}, {"role": "user", "content": "Q2 ünïcödé 日本"}],
    [{"role": "user", "content": [{"type": "text", "text": "part one, "}, {"type": "text", "text": "part two"}]},
     {"role": "assistant", "content": None}, {"role": "user", "content": "again {user_message}"}],
    [{"role": "user", "content": "call it"}, {"role": "assistant", "content": "calling"}, {"role": "tool", "content": "42"}],
]


def conv_cases() -> list[dict]:
    cases = []
    for conv in (CONV_TEMPLATES["chatml"], CONV_TEMPLATES["LM"], TWO_SEPS):
        template = ConvTemplate(conv)
        for messages in CHATS:
            for add_generation_prompt in (True, False):
                case = {"conv": conv, "messages": messages, "add_generation_prompt": add_generation_prompt}
                try:
                    case |= {"text": template.render(messages, add_generation_prompt), "prefix_ids": template.prefix_ids}
                except Exception as e:  # noqa: BLE001 - the refusal itself is the expectation
                    assert 'role "tool" is not supported' in str(e)
                    case["error"] = 'role "tool" is not supported'
                cases.append(case)
        cases.append({"conv": conv, "messages": [{"role": "robot", "content": "x"}], "add_generation_prompt": True,
                      "error": 'role "robot" is not supported'})
        cases.append({"conv": conv, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}],
                      "add_generation_prompt": True, "error": "only text"})
    return cases


def test_conv_template_renders_as_python(native_build):
    """Multi-turn chats over three templates: the C++ prompt equals Python's ConvTemplate's."""
    cases = conv_cases()
    refusals = sum("error" in c for c in cases)
    assert refusals == 10 and len(cases) == 36  # the tool turn (chatml, LM), a robot, an image
    write_fixture(native_build, "conv_cases", cases)
    checks = 2 * (len(cases) - refusals) + refusals  # the text and the prefix ids of each rendered case
    assert f"conv_template: {checks} passed, 0 failed" in run_ctest(native_build, "conv_template")


# -- sampler -------------------------------------------------------------------------------------
PARAMS = [
    SamplingParams(),
    SamplingParams(temperature=0.7),
    SamplingParams(temperature=1.3, top_k=5),
    SamplingParams(temperature=0.9, top_p=0.6),
    SamplingParams(temperature=1.0, top_k=10, top_p=0.8, repetition_penalty=1.3),
    SamplingParams(temperature=0.8, presence_penalty=1.5, frequency_penalty=0.7, logit_bias=((3, 5.0), (7, -100.0))),
    SamplingParams(repetition_penalty=0.7, logit_bias=((11, 2.5),)),
]


def _params_json(p: SamplingParams, seed: int | None) -> dict:
    return {"temperature": p.temperature, "top_p": p.top_p, "top_k": p.top_k, "repetition_penalty": p.repetition_penalty,
            "presence_penalty": p.presence_penalty, "frequency_penalty": p.frequency_penalty,
            "logit_bias": [list(b) for b in p.logit_bias], "seed": seed}


def sampler_cases() -> dict:
    rng = np.random.default_rng(zlib.crc32(b"native-sampler"))
    seeds = [0, 1, 7, 2**32 + 5, 123456789012345]
    cases: dict = {"rng": [{"seed": s, "doubles": np.random.default_rng(s).random(6).tolist()} for s in seeds],
                   "pick": [], "runs": []}
    for i, params in enumerate(PARAMS):
        for _ in range(20):
            logits = (rng.standard_normal(64) * 3).astype(np.float32)
            logits[rng.integers(0, 64, 3)] = logits.max()  # ties at the top
            history = rng.integers(0, 64, 12).tolist()
            u = float(rng.random())
            sampler = Sampler(params)
            sampler.rng = types.SimpleNamespace(random=lambda u=u: u)  # the draw Python would make
            token = sampler._pick(sampler.adjusted(logits, history))
            cases["pick"].append({"params": _params_json(params, None), "logits": logits.tolist(), "history": history,
                                  "u": u, "token": token})
        seed = 1000 + i
        sampler = Sampler(SamplingParams(**{**params.__dict__, "seed": seed}))
        steps = [{"logits": (rng.standard_normal(64) * 2).astype(np.float32).tolist(),
                  "history": rng.integers(0, 64, 8).tolist()} for _ in range(40)]
        tokens = [sampler(np.asarray(s["logits"], dtype=np.float32), s["history"]) for s in steps]
        cases["runs"].append({"params": _params_json(params, seed), "steps": steps, "tokens": tokens})
    return cases


def test_sampler_matches_numpy(native_build):
    """NumPy's PCG64 stream bit for bit, single picks for a given uniform, seeded 40-token runs."""
    cases = sampler_cases()
    assert len({c["token"] for c in cases["pick"]}) > 10  # the picks are not all the same token
    write_fixture(native_build, "sampler_cases", cases)
    out = run_ctest(native_build, "sampler")
    assert f"sampler: {5 * 6 + len(PARAMS) * 21} passed, 0 failed" in out


# -- the engine on the bundled model -------------------------------------------------------------
RAW = [("The capital of France is", 32, []), ("def fibonacci(n):", 40, ["\n\n"]), ("Zürich liegt in", 16, [])]
TURNS = [([{"role": "system", "content": "You are a terse assistant."},
           {"role": "user", "content": "Name three colours."}], 24),
         ([{"role": "user", "content": "And three fruits?"}], 24)]


def engine_cases(engine: Engine) -> dict:
    """What the Python engine generates, in the order the C++ test asks (prefix reuse included)."""
    stop_ids = engine.default_stop_token_ids()
    greedy = engine.sampling_params(temperature=0)
    cases: dict = {"raw": [], "chat": []}
    for prompt, max_tokens, stop in RAW:
        ids = engine.tokenizer.encode(prompt)
        text = "".join(engine.generate(ids, GenerationConfig(max_tokens, greedy, tuple(stop), stop_ids)))
        stats = engine.last_stats
        cases["raw"].append({"prompt": prompt, "prompt_ids": ids, "max_tokens": max_tokens, "stop": stop,
                             "tokens": stats.tokens, "text": text, "finish_reason": stats.finish_reason})
    conv = ConvTemplate(engine.chat_config["conv_template"])
    messages: list[dict] = []
    for new, max_tokens in TURNS:
        messages += new
        ids = conv.prefix_ids + engine.tokenizer.encode(conv.render(messages), add_special_tokens=False)
        before = engine.sequence_tokens(0)
        keep = next((i for i, (a, b) in enumerate(zip(before, ids, strict=False)) if a != b), min(len(before), len(ids)))
        config = GenerationConfig(max_tokens, greedy, tuple(engine.chat_stop_strings()), stop_ids)
        text = "".join(engine.generate(ids, config))
        cases["chat"].append({"new_messages": new, "max_tokens": max_tokens, "text": text, "prompt_tokens": len(ids),
                              "min_cached": min(keep, len(ids) - 1)})
        messages.append({"role": "assistant", "content": text})
    assert cases["chat"][1]["min_cached"] > len(conv.render(TURNS[0][0])) // 8  # the second turn reuses the first
    seeded = engine.sampling_params(temperature=0.8, top_p=0.9, seed=7)
    cases["seeded_text"] = "".join(engine.generate(engine.tokenizer.encode("The weather today"),
                                                   GenerationConfig(12, seeded, (), stop_ids)))
    return cases


def test_engine_generates_what_python_generates(native_build, bundled_w4):
    """Greedy raw prompts (tokens), two chat turns (text; the second reuses the KV cache), seeded
    sampling, the C API's chunks and usage, and abort."""
    engine = Engine(bundled_w4.mlc_dir, bundled_w4.lib)
    cases = engine_cases(engine)
    assert {c["finish_reason"] for c in cases["raw"]} >= {"length"}
    write_fixture(native_build, "model_dir", str(bundled_w4.mlc_dir))
    write_fixture(native_build, "model_lib", str(bundled_w4.lib))
    write_fixture(native_build, "run_cases", cases)
    out = run_ctest(native_build, "engine")
    assert "engine: " in out and " 0 failed" in out


# -- bad input -----------------------------------------------------------------------------------
def _folder_copy(src: Path, dst: Path) -> Path:
    """A copy of an MLC folder whose shards are symlinks (cheap), to break one file of."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name.startswith("params_shard_"):
            (dst / f.name).symlink_to(f)
        else:
            shutil.copy2(f, dst / f.name)
    return dst


def bad_engines(mlc: Path, lib: Path, other_lib: Path, tmp: Path) -> list[dict]:
    truncated = _folder_copy(mlc, tmp / "truncated")
    shard = truncated / "params_shard_1.bin"
    data = shard.resolve().read_bytes()
    shard.unlink()
    shard.write_bytes(data[: len(data) // 2])
    flipped = _folder_copy(mlc, tmp / "flipped")
    raw = bytearray((mlc / "params_shard_0.bin").read_bytes())
    raw[len(raw) // 2] ^= 1
    (flipped / "params_shard_0.bin").unlink()
    (flipped / "params_shard_0.bin").write_bytes(raw)
    reshaped = _folder_copy(mlc, tmp / "reshaped")
    index = json.loads((reshaped / "tensor-cache.json").read_text())
    record = next(r for r in index["records"][0]["records"] if len(r["shape"]) == 2)
    record["shape"] = [record["shape"][1], record["shape"][0] * 2]
    (reshaped / "tensor-cache.json").write_text(json.dumps(index))
    bad_config = _folder_copy(mlc, tmp / "bad-config")
    (bad_config / "mlc-chat-config.json").write_text('{"model_type": "llama", ')
    return [
        {"model_dir": str(truncated), "model_lib": str(lib), "error": "(truncated?)"},
        {"model_dir": str(flipped), "model_lib": str(lib), "error": "fails its md5 check"},
        {"model_dir": str(reshaped), "model_lib": str(lib), "error": "wrong library for this folder"},
        {"model_dir": str(mlc), "model_lib": str(other_lib), "error": "is for quantization 'q0f32'"},
        {"model_dir": str(bad_config), "model_lib": str(lib), "error": "is not a valid chat config (bad JSON"},
        {"model_dir": str(tmp / "nowhere"), "model_lib": str(lib), "error": "is not an MLC model folder"},
        {"model_dir": str(mlc), "model_lib": str(tmp / "missing.so"), "error": "does not exist"},
    ]


def test_bad_input_gives_one_line_errors(native_build, bundled_w4, tiny_chat, tmp_path):
    """Broken folders and libraries fail create() in one line; bad requests give one error chunk
    each, and the engine then still answers."""
    write_fixture(native_build, "model_dir", str(bundled_w4.mlc_dir))
    write_fixture(native_build, "model_lib", str(bundled_w4.lib))
    bad = bad_engines(bundled_w4.mlc_dir, bundled_w4.lib, tiny_chat.lib, tmp_path)
    write_fixture(native_build, "bad_engines", bad)
    out = run_ctest(native_build, "errors")
    assert f"errors: {len(bad) + 14} passed, 0 failed" in out  # + a bad option, create, 11 bad requests, a good one


# -- a model linked into the program -------------------------------------------------------------
def test_model_linked_statically(native_build, tiny_chat, tiny_chat_library):
    """``--target llvm-static``: the archive linked into a test program, loaded as system://PREFIX,
    generates what the Python engine generates with the shared library."""
    archive = tiny_chat_library("llvm-static", ".a")
    prefix = json.loads(static_metadata_path(archive).read_text())["system_lib_prefix"]
    assert prefix.startswith("llama_q0f32_")
    engine = Engine(tiny_chat.mlc_dir, tiny_chat.lib)
    greedy = engine.sampling_params(temperature=0)
    raw = []
    for prompt in ("The capital of France is", "Once upon a time"):
        ids = engine.tokenizer.encode(prompt)
        "".join(engine.generate(ids, GenerationConfig(12, greedy, (), engine.default_stop_token_ids())))
        raw.append({"prompt_ids": ids, "max_tokens": 12, "tokens": engine.last_stats.tokens})
    write_fixture(native_build, "static_cases", {"model_dir": str(tiny_chat.mlc_dir), "prefix": prefix, "raw": raw})
    try:
        configure = run(["cmake", "-S", NATIVE, "-B", native_build, f"-DLOWBIT_STATIC_MODEL={archive}"])
        assert configure.returncode == 0, configure.stderr[-3000:]
        linked = run(["cmake", "--build", native_build, "-j2", "--target", "static_model_test"])
        assert linked.returncode == 0, linked.stdout[-3000:] + linked.stderr[-3000:]
        assert "static_model: 2 passed, 0 failed" in run_ctest(native_build, "static_model")
    finally:  # the archive is temporary: leave the cached build without it
        run(["cmake", "-S", NATIVE, "-B", native_build, "-DLOWBIT_STATIC_MODEL="])


def test_engine_needs_only_the_tvm_runtime(native_build):
    """What an app ships: the engine library links TVM's runtime and nothing of Python, torch or
    TVM's compiler."""
    linked = run(["ldd", native_build / "liblowbit_engine.so"]).stdout
    assert "libtvm_runtime.so" in linked and "libtvm_ffi.so" in linked
    assert not any(lib in linked for lib in ("libtvm_compiler", "libpython", "libtorch")), linked
